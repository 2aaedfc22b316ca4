"""benchmarks.paper: the Table 1 command (planned, run, merged and resumed on CPU with the tiny preset)."""
import json

import pytest

from benchmarks import paper
from core.precision import resolve_precision


def test_the_default_plan_is_table_1_in_fp32(capsys):
    assert paper.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Plan: 4 runs into lm/large, lm/medium, lm/small")
    assert [line.split(":")[0] for line in lines[1:5]] == ["#1 lm/small none p=0 seed 1", "#2 lm/medium zaremba p=0.5 seed 1",
                                                           "#3 lm/medium zaremba p=0.5 seed 2", "#4 lm/large zaremba p=0.65 seed 1"]
    commands = lines[5:]
    assert len(commands) == 4 and all("--precision fp32" in c and "--resume" in c and "--checkpoint-every 3.0" in c
                                      for c in commands)
    with pytest.raises(SystemExit):
        paper.main(["--jobs", "medium:zaremba", "--dry-run"])
    assert "PRESET:VARIANT:SEED" in capsys.readouterr().err


@pytest.mark.parametrize("jobs, message", [("medium:zaremba:1,small:none:1,medium:zaremba:01",
                                             "--jobs gives medium:zaremba:1 twice: name each once"),
                                            ("small:none:-1", "bad job 'small:none:-1': give PRESET:VARIANT:SEED (a "
                                                              "seed >= 0)")])
def test_a_job_given_twice_or_a_negative_seed_is_refused(jobs, message, capsys):
    with pytest.raises(SystemExit):
        paper.main(["--jobs", jobs, "--dry-run"])
    assert message in capsys.readouterr().err


def test_tf32_is_fp32_off_cuda():
    assert resolve_precision("tf32", "cpu") == "fp32"


def test_the_paper_command_runs_its_jobs_side_by_side_and_lands_each_row_as_it_ends(tiny_ptb, tmp_path, monkeypatch,
                                                                                      capfd):
    monkeypatch.setenv("RNNREG_DATA_DIR", str(tiny_ptb))
    work, out = tmp_path / "work", tmp_path / "results"
    args = ["--device", "cpu", "--jobs", "tiny:none:1,tiny:zaremba:1,tiny:zaremba:2", "--parallel", "2",
            "--threads", "1", "--work", str(work), "--out", str(out), "--custom-data"]
    assert paper.main(args) == 0
    runs = json.loads((out / "lm" / "tiny.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in runs) == [("none", 1), ("zaremba", 1), ("zaremba", 2)]
    output = capfd.readouterr().out
    assert "Grid: 3 jobs finished, 0 finished before, 0 failed, 0 not run." in output
    assert (work / "logs" / "lm_tiny_zaremba_p0.3_seed_2.log").exists()
    assert paper.main(args) == 0  # again: every job was finished, nothing is retrained
    assert "Grid: 0 jobs finished, 3 finished before" in capfd.readouterr().out
    assert json.loads((out / "lm" / "tiny.json").read_text()) == runs


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


def test_a_terminated_paper_command_keeps_every_finished_row_and_resumes_the_rest(tiny_ptb, tmp_path):
    import signal
    import subprocess
    import sys

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    work, out = tmp_path / "work", tmp_path / "results"
    args = [sys.executable, "-m", "benchmarks.paper", "--device", "cpu", "--jobs", "tiny:none:1,tiny:zaremba:1",
            "--parallel", "1", "--threads", "1", "--work", str(work), "--out", str(out), "--custom-data"]
    env = {**__import__("os").environ, "RNNREG_DATA_DIR": str(tiny_ptb)}
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "#2 lm/tiny zaremba p=0.3 seed 1: running" in line:  # the first row has landed, the second trains
            break
    proc.send_signal(signal.SIGTERM)  # what `timeout` sends
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, rest  # SIGTERM, as a shell reports it
    assert "Grid: 1 job finished" in rest and "1 stopped, 0 not run" in rest  # zaremba resumes
    assert [r["variant"] for r in json.loads((out / "lm" / "tiny.json").read_text())] == ["none"]
    again = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 finished before" in again.stdout
    assert [r["variant"] for r in json.loads((out / "lm" / "tiny.json").read_text())] == ["none", "zaremba"]
