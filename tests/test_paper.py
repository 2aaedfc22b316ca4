"""benchmarks.paper: the Table 1 command (planned, run, merged and resumed on CPU with the tiny preset)."""
import json

import pytest

from benchmarks import paper
from core.precision import resolve_precision


def test_the_default_plan_is_table_1_in_fp32(capsys):
    assert paper.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["small none seed 1", "medium zaremba seed 1",
                                                      "medium zaremba seed 2", "large zaremba seed 1"]
    assert all("--precision fp32" in line and "--resume" in line and "--checkpoint-every 3.0" in line for line in lines)
    with pytest.raises(SystemExit):
        paper.main(["--jobs", "medium:zaremba", "--dry-run"])
    assert "PRESET:VARIANT:SEED" in capsys.readouterr().err


def test_tf32_is_fp32_off_cuda():
    assert resolve_precision("tf32", "cpu") == "fp32"


def test_the_paper_command_runs_its_jobs_side_by_side_and_merges_their_tables(tiny_ptb, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RNNREG_DATA_DIR", str(tiny_ptb))
    work, out = tmp_path / "work", tmp_path / "results"
    args = ["--device", "cpu", "--jobs", "tiny:none:1,tiny:zaremba:1,tiny:zaremba:2", "--parallel", "2",
            "--threads", "1", "--work", str(work), "--out", str(out)]
    monkeypatch.setattr(paper, "job_command", _with_custom_data(paper.job_command))
    assert paper.main(args) == 0
    runs = json.loads((out / "lm" / "tiny.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in runs) == [("none", 1), ("zaremba", 1), ("zaremba", 2)]
    assert "3 added, 0 replaced, 0 refused" in capfd.readouterr().out
    assert paper.main(args) == 0  # again: every job resumes its finished run, nothing is retrained
    assert json.loads((out / "lm" / "tiny.json").read_text()) == runs


def _with_custom_data(job_command):
    def wrapped(*a, **k):
        command, table, label = job_command(*a, **k)
        return command + ["--custom-data"], table, label
    return wrapped


def test_an_lm_training_step_never_reads_a_value_back_to_the_host(tmp_path, monkeypatch):
    """Losses, token counts and the gradient norm stay on the device between log intervals, so a GPU step is
    never stalled by a host synchronisation (what CUDA graphs and a launch-bound LM need)."""
    import torch

    from core import Trainer, TrainConfig
    from tasks.lm.task import LanguageModelTask
    from conftest import write_tiny_ptb

    data = write_tiny_ptb(tmp_path / "data")
    config = dict(LanguageModelTask.presets["tiny"], seed=1, epochs=1, scheme="zaremba", dropout=0.3)
    task = LanguageModelTask(config, data, download=False, custom_data=True).load_data()
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict({**config, "log_interval": 10**6}), None,
                      "cpu", progress=False)
    reads = {"n": 0}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    steps, state = 0, None
    for batch in task.batches("train", "cpu"):
        out = trainer.train_step(batch, state)
        state = out.state
        steps += 1
    assert steps > 10 and reads["n"] == 0
