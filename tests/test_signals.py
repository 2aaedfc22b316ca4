"""Signals outside training (issue 56): SIGINT/SIGTERM while a table is written, the overview rendered or the next
run loads its data. Real signals, sent when the command says it has reached the named point ($RNNREG_PAUSE_AT):
the command finishes the write under way (json, md and png together), says what was kept and how to continue,
and exits 130 (SIGINT) or 143 (SIGTERM); a second signal exits at once without a half-written file."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tables.task_table import task_markdown
from core.interrupt import ENV_PAUSE_AT
from tasks.base import get_task

ROOT = Path(__file__).resolve().parent.parent


def runner(tiny_ptb, tmp_path, pause_at, *extra):
    argv = ["--task", "lm", "--preset", "tiny", "--variants", "none,zaremba", "--epochs", "1", "--data-dir",
            str(tiny_ptb), "--custom-data", "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"),
            "--no-progress", "--device", "cpu", "--threads", "1", *extra]
    env = {**os.environ, ENV_PAUSE_AT: pause_at}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.run", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def signal_at(proc, point, signum, again_when=None):
    """Send `signum` when the command pauses at `point` (and once more when it prints `again_when`)."""
    for line in proc.stdout:
        if line.strip() == f"paused at {point}":
            proc.send_signal(signum)
            break
    else:
        raise AssertionError(f"never paused at {point}")
    if again_when:
        for line in proc.stdout:
            if again_when in line:
                proc.send_signal(signum)
                break
    return proc.communicate(timeout=300)[0]


def table_is_whole(results):
    """The json, md and png of the table agree: the md is what the json renders to, the png was drawn."""
    table = results / "lm" / "tiny-e1.json"
    runs = json.loads(table.read_text())
    assert (results / "lm" / "tiny-e1.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "lm" / "tiny-e1.md").read_text() == task_markdown(get_task("lm"), "tiny-e1", "tiny", runs, {})
    assert not [p for p in results.rglob("*.tmp")]  # no temporary left behind
    return runs


def test_sigint_while_the_table_is_written_finishes_the_table_then_stops_with_130(tiny_ptb, tmp_path):
    proc = runner(tiny_ptb, tmp_path, "table_write")
    output = signal_at(proc, "table_write", signal.SIGINT)
    assert proc.returncode == 130, output
    assert "SIGINT: finishing the write under way, then stopping" in output and "Traceback" not in output
    assert "stopped by SIGINT: the runs finished so far are in" in output and "--resume" in output.splitlines()[-1]
    assert [r["variant"] for r in table_is_whole(tmp_path / "results")] == ["none"]  # zaremba never started
    assert (tmp_path / "results" / "README.md").exists()  # the overview was part of the write


def test_sigterm_while_the_next_run_loads_its_data_stops_with_143_and_the_rerun_continues(tiny_ptb, tmp_path):
    proc = runner(tiny_ptb, tmp_path, "data_load")
    output = signal_at(proc, "data_load", signal.SIGTERM)  # the first run's data: nothing trained yet
    assert proc.returncode == 143, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    rerun = runner(tiny_ptb, tmp_path, "", "--resume")
    assert rerun.communicate(timeout=300)[0] and rerun.returncode == 0
    assert [r["variant"] for r in table_is_whole(tmp_path / "results")] == ["none", "zaremba"]


def test_a_second_signal_exits_at_once_without_a_half_written_file(tiny_ptb, tmp_path):
    proc = runner(tiny_ptb, tmp_path, "table_write")
    output = signal_at(proc, "table_write", signal.SIGINT, again_when="finishing the write under way")
    assert proc.returncode == 130, output
    assert "Traceback" not in output and output.splitlines()[-1] == (
        "second SIGINT: stopping at once; no file is half-written, and the same command again writes what is missing "
        "(benchmarks.run: with --resume)")
    table = tmp_path / "results" / "lm" / "tiny-e1.json"
    assert not table.exists() or json.loads(table.read_text())  # the old file or the new one, never half
    assert not [p for p in (tmp_path / "results").rglob("*.tmp")]


def test_sigint_while_report_renders_leaves_each_table_whole(tiny_ptb, tmp_path):
    proc = runner(tiny_ptb, tmp_path, "")
    assert proc.communicate(timeout=300)[0] and proc.returncode == 0
    md = tmp_path / "results" / "lm" / "tiny-e1.md"
    md.unlink()
    env = {**os.environ, ENV_PAUSE_AT: "report_write"}
    report = subprocess.Popen([sys.executable, "-m", "benchmarks.report", str(md.with_suffix(".json"))], cwd=ROOT,
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = signal_at(report, "report_write", signal.SIGINT)
    assert report.returncode == 130, output
    assert "Traceback" not in output and "stopped by SIGINT" in output
    table_is_whole(tmp_path / "results")


def test_a_second_signal_in_training_exits_at_once_with_one_line(tiny_ptb, tmp_path):
    """The first SIGTERM asks for a checkpoint after the step; a second before it stops at once: 143 and one line,
    never a traceback; the last checkpoint (none yet: the first epoch) stays as it was."""
    proc = runner(tiny_ptb, tmp_path, "training")
    output = signal_at(proc, "training", signal.SIGTERM, again_when="saving a checkpoint after this step")
    assert proc.returncode == 143, output
    assert "second SIGTERM: stopping at once" in output and "Traceback" not in output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_imports_torch_is_one_line_and_130_or_143(tiny_ptb, tmp_path, signum):
    proc = runner(tiny_ptb, tmp_path, "startup")  # paused in benchmarks/__init__.py, before torch is imported
    output = signal_at(proc, "startup", signum)
    assert proc.returncode == 128 + signum, output
    assert output.splitlines()[-1] == (f"stopped by {signal.Signals(signum).name} while starting (importing torch "
                                       "and the tasks): nothing was written")
    assert "Traceback" not in output and not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_signal_after_the_imports_but_before_the_command_takes_signals_over_is_one_line_too(tiny_ptb, tmp_path):
    proc = runner(tiny_ptb, tmp_path, "checks")  # flags parsed, torch imported; no run dir locked yet
    output = signal_at(proc, "checks", signal.SIGINT)
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert output.splitlines()[-1] == ("stopped by SIGINT: no file is half-written (each write lands whole or not at "
                                       "all); run the command again to continue")
