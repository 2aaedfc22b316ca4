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
