"""Nothing lost under faults (docs/reliability.md): a double launch, a write the kernel refuses (a file-size limit
fails writes with EFBIG just as a full disk fails them with ENOSPC), damaged tables, folders in the way, durable
writes and a signal during the final test pass. Every fault is real: a second process, a kernel limit, bytes on disk."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from benchmarks import grid, report, run
from core.locks import run_dir_lock_file
from core.utils import write_text

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def lm_tiny(tiny_ptb, tmp_path, *extra):
    return ["--task", "lm", "--preset", "tiny", "--variants", "none", "--data-dir", str(tiny_ptb), "--custom-data",
            "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"), "--no-progress", "--device",
            "cpu", "--threads", "1", *extra]


def start(argv, script=None):
    code = ["-c", script, *argv] if script else ["-m", "benchmarks.run", *argv]
    return subprocess.Popen([sys.executable, *code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(proc, text):
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"the process ended without printing {text!r}")


def test_a_second_launch_of_the_same_runs_stops_at_once_naming_the_holder_and_a_killed_holder_never_blocks(
        tiny_ptb, tmp_path):
    long = lm_tiny(tiny_ptb, tmp_path, "--epochs", "500", "--resume")  # minutes: still training when checked
    first = start(long)
    wait_for(first, '"epoch": 1')  # it trains, holding its run dir
    for resume in (False, True):
        argv = long if resume else [a for a in long if a != "--resume"]
        second = subprocess.run([sys.executable, "-m", "benchmarks.run", *argv], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1
        assert f"none-p0-seed1 is in use by process {first.pid} on host" in second.stderr
        assert "Wait for it to finish (or stop it), then run again with --resume" in second.stderr
    first.send_signal(signal.SIGKILL)  # no handler runs: the lock file stays behind
    first.wait()
    assert run_dir_lock_file(tmp_path / "runs" / "lm" / "tiny-e500" / "none-p0-seed1").exists()
    third = start(long)  # the kernel released the dead holder's lock: this one trains
    line = wait_for(third, '"epoch"')
    third.send_signal(signal.SIGKILL)
    third.wait()
    assert line.startswith('{"epoch"')


LIMITED = textwrap.dedent('''
    import resource, signal, sys
    from benchmarks import run
    from core import trainer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    save = trainer.Trainer._save_checkpoint
    def save_then_fill_the_disk(self, epoch, within=None):
        save(self, epoch, within)
        resource.setrlimit(resource.RLIMIT_FSIZE, (BYTES, resource.RLIM_INFINITY))
    trainer.Trainer._save_checkpoint = save_then_fill_the_disk
    run.main(sys.argv[1:])
''')


def test_a_checkpoint_the_kernel_refuses_is_one_error_naming_it_the_previous_one_intact_and_the_command(
        tiny_ptb, tmp_path):
    # after epoch 1's checkpoint, no file may grow past 8 KB: log lines still fit, a checkpoint does not
    proc = start(lm_tiny(tiny_ptb, tmp_path), LIMITED.replace("BYTES", "8192"))
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, output
    run_dir = tmp_path / "runs" / "lm" / "tiny" / "none-p0-seed1"
    assert f"error: could not write {run_dir}/" in output and ".pt: the file is larger than this process may " \
                                                           "write (a file-size limit) (EFBIG)" in output
    assert "Traceback" not in output and "inline_container" not in output
    assert "then continue with:\n  python -m benchmarks.run --task lm --preset tiny" in output and "--resume" in output
    kept = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # whole, and the last one written
    assert kept["epoch"] == 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    resumed = subprocess.run([sys.executable, "-m", "benchmarks.run", *lm_tiny(tiny_ptb, tmp_path, "--resume")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "results" / "lm" / "tiny.json").read_text())[0]["epochs"] == 2


def test_a_write_refused_in_torchs_own_temporary_folder_is_one_error_naming_the_folder_before_any_run(
        tiny_ptb, tmp_path):
    import resource

    def limit_files_to_one_kb():  # from the start: torch's first own write, its compiler's modules, is refused
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *lm_tiny(tiny_ptb, tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_files_to_one_kb,
                          env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        f"error: torch could not write its own temporary files in {tmp_path / 'tmp'} (the modules torch._dynamo "
        "generates when it is imported): the file is larger than this process may write (a file-size limit) (EFBIG). "
        "Point TMPDIR at a folder with room (TMPDIR=<folder> python -m ...), or lift the limit, then run the command "
        "again")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))
    assert not (tmp_path / "results" / "lm").exists()


TABLE_LIMITED = textwrap.dedent('''
    import resource, signal, sys
    from benchmarks import run
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    write = run.write_results
    def fill_the_disk_then_write(*args, **kwargs):  # training is over: now the disk is full
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        return write(*args, **kwargs)
    run.write_results = fill_the_disk_then_write
    run.main(sys.argv[1:])
''')


def test_a_table_the_kernel_refuses_after_training_keeps_the_run_and_gives_the_command_that_writes_it(
        tiny_ptb, tmp_path):
    proc = start(lm_tiny(tiny_ptb, tmp_path), TABLE_LIMITED)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, output
    table = tmp_path / "results" / "lm" / "tiny.json"
    assert f"could not write {table}: the file is larger than this process may write" in output
    assert "The run is kept in" in output and "writes its table without training again" in output
    assert not table.exists() and not [p for p in table.parent.iterdir() if p.name.endswith(".tmp")]
    again = subprocess.run([sys.executable, "-m", "benchmarks.run", *lm_tiny(tiny_ptb, tmp_path, "--resume")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and '"epoch"' not in again.stdout  # nothing trained again
    assert len(json.loads(table.read_text())) == 1


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\x00\xff garbage", "is damaged: not readable JSON"),
    (b'{"runs": []}', "a results table is a JSON list of runs, this holds dict"),
    (b"null", "this holds NoneType"),
    (b'[{"variant": "none", "dropout": 0, "seed": 1, "metrics": {}}]', "run 1 of 1 lacks config"),
    (b'[{"variant": "none", "dropout": 0, "seed": 1, "config": {}}]', "run 1 of 1 lacks metrics"),
    # the fields the renderers read after training: refused before it, never a KeyError with the json half-done
    (b'[{"variant": "none", "dropout": 0, "seed": 1, "config": {}, "metrics": {}}]',
     "run 1 of 1 lacks history, provenance, wall_s"),
])
def test_a_damaged_table_is_one_error_naming_it_before_training_and_nothing_is_written(tiny_ptb, tmp_path, content,
                                                                                         message):
    table = tmp_path / "results" / "lm" / "tiny.json"
    table.parent.mkdir(parents=True)
    table.write_bytes(content)
    with pytest.raises(SystemExit, match=f"{table} .*{message}.*git checkout -- "):
        run.main(lm_tiny(tiny_ptb, tmp_path))
    assert table.read_bytes() == content and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in table.parent.iterdir()) == ["tiny.json"]
    with pytest.raises(SystemExit):  # re-rendering and merging say the same, and write nothing
        report.main([str(table)])
    with pytest.raises(SystemExit):
        report.main([str(table), "--into", str(tmp_path / "other" / "lm" / "tiny.json")])
    assert table.read_bytes() == content and not (tmp_path / "other").exists()


@pytest.mark.parametrize("in_the_way, flag", [("results/lm", "--out"), ("runs/lm", "--run-dir")])
def test_a_file_where_a_run_writes_a_folder_stops_it_before_training(tiny_ptb, tmp_path, in_the_way, flag):
    (tmp_path / in_the_way).parent.mkdir(parents=True)
    (tmp_path / in_the_way).write_text("a file")
    with pytest.raises(SystemExit, match=f"{tmp_path / in_the_way} is a file, not a folder; move it away or pick "
                                         f"another --out / --run-dir"):
        run.main(lm_tiny(tiny_ptb, tmp_path))
    assert not (tmp_path / "runs" / "lm" / "tiny").exists() or flag == "--out" and not any(
        (tmp_path / "runs").rglob("log.jsonl"))


@pytest.mark.parametrize("name", ["tiny.json", "tiny.md"])
def test_a_folder_where_the_table_goes_stops_the_run_before_training_naming_it(tiny_ptb, tmp_path, name, capsys):
    folder = tmp_path / "results" / "lm" / name
    folder.mkdir(parents=True)
    said = f"{folder} is a folder where a results file belongs: move it away (or pick another --out)"
    with pytest.raises(SystemExit, match=re.escape(said)):
        run.main(lm_tiny(tiny_ptb, tmp_path))
    assert not (tmp_path / "runs").exists() and list(folder.parent.iterdir()) == [folder]
    if name.endswith(".json"):  # re-rendering and the grid's plan say the same
        with pytest.raises(SystemExit):
            report.main([str(folder)])
        with pytest.raises(SystemExit):
            grid.main(["--tasks", "lm", "--preset", "tiny", "--out", str(tmp_path / "results"), "--device", "cpu",
                       "--dry-run"])
        assert capsys.readouterr().err.count(said) == 2


def test_writes_are_durable_honour_the_umask_and_clean_their_own_dead_temporaries(tmp_path):
    target = tmp_path / "t.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".t.json.{dead.stdout.strip()}.abc123.tmp"  # a write killed half-way, its process gone
    live = tmp_path / f".t.json.{os.getpid()}.xyz789.tmp"  # a write in progress elsewhere: not ours to remove
    stale.write_text("half")
    live.write_text("half")
    old = os.umask(0o027)
    try:
        write_text(target, "x")
    finally:
        os.umask(old)
    assert target.read_text() == "x" and (target.stat().st_mode & 0o777) == 0o640
    assert not stale.exists() and live.exists()


def test_a_signal_during_the_final_test_pass_finishes_it_says_so_and_stops_the_command(tiny_ptb, tmp_path):
    script = textwrap.dedent('''
        import os, signal, sys
        from benchmarks import run
        from core import trainer
        evaluate = trainer.Trainer.evaluate
        def evaluate_then_signal(self, split, *a, **k):
            if split == "test":
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while test is being evaluated
            return evaluate(self, split, *a, **k)
        trainer.Trainer.evaluate = evaluate_then_signal
        run.main(sys.argv[1:])
    ''')
    proc = start(lm_tiny(tiny_ptb, tmp_path, "--variants", "none,zaremba"), script)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "SIGINT: finishing the final test pass first (the run is then complete), then stopping" in output
    assert "saving a checkpoint after this step" not in output
    runs = json.loads((tmp_path / "results" / "lm" / "tiny.json").read_text())
    assert [r["variant"] for r in runs] == ["none"] and "test_ppl" in runs[0]["metrics"]  # zaremba never started
    assert "Continue with:" in output and not (tmp_path / "runs" / "lm" / "tiny" / "zaremba-p0.3-seed1").exists()


LOG_LIMITED = textwrap.dedent('''
    import resource, signal, sys
    from benchmarks import run
    from core import trainer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    save = trainer.Trainer._save_checkpoint
    def save_then_leave_20_bytes_for_the_log(self, epoch, within=None):
        save(self, epoch, within)  # the epoch's log line comes next: the kernel lets 20 of its bytes through
        room = (self.run_dir / "log.jsonl").stat().st_size + 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    trainer.Trainer._save_checkpoint = save_then_leave_20_bytes_for_the_log
    run.main(sys.argv[1:])
''')


def test_a_log_line_the_kernel_cuts_short_is_taken_back_whole_and_resume_starts_a_line_of_its_own(tiny_ptb, tmp_path):
    argv = lm_tiny(tiny_ptb, tmp_path, "--no-tensorboard")
    proc = start(argv, LOG_LIMITED)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, output
    log = tmp_path / "runs" / "lm" / "tiny" / "none-p0-seed1" / "log.jsonl"
    assert f"error: could not write {log}: the file is larger than this process may write" in output
    before = log.read_bytes()
    assert before.endswith(b"\n") and not any(json.loads(line)["kind"] == "epoch" for line in before.splitlines())
    resumed = subprocess.run([sys.executable, "-m", "benchmarks.run", *argv, "--resume"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert log.read_bytes().startswith(before) and "torn" not in resumed.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"kind": "resumed", "epoch": 2, "step": 0} in lines and lines[-1]["kind"] == "epoch"


def test_a_log_torn_before_is_cut_back_to_its_last_whole_line_and_the_grid_reads_past_the_torn_line(tmp_path):
    from benchmarks.jobs import display as grid_report
    from benchmarks.jobs import plan as planning
    from core.monitor import Monitor

    job = planning.Job("lm", "tiny", "tiny", "none", 1, (0.0, None))
    settings = planning.Settings(run_dir=str(tmp_path / "runs"))
    log = planning.job_run_dir(job, settings) / "log.jsonl"
    log.parent.mkdir(parents=True)
    whole = b'{"kind": "epoch", "epoch": 1}\n'
    log.write_bytes(whole + b'{"kind": "epoch", "epoch": 2, "lr": 0.5, "wall_s": 0.')  # a machine lost mid-write
    assert grid_report._epoch_progress(job, settings) == "epoch 1/2 (log.jsonl: torn last line skipped)"
    with pytest.warns(UserWarning, match=f"{log} ended in a torn line"):
        Monitor(log.parent, tensorboard=False).note({"kind": "resumed", "epoch": 2, "step": 0})
    assert log.read_bytes() == whole + b'{"kind": "resumed", "epoch": 2, "step": 0}\n'
    assert grid_report._epoch_progress(job, settings) == "epoch 1/2"


def test_a_resume_that_finds_a_log_but_no_checkpoint_marks_its_restart_instead_of_doubling_the_log(tiny_ptb, tmp_path):
    import resource

    def limit_files_to_4_kb():  # the first best.pt is refused: epoch 1 logged its steps, no checkpoint exists
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    argv = [sys.executable, "-m", "benchmarks.run", *lm_tiny(tiny_ptb, tmp_path, "--no-tensorboard")]
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit_files_to_4_kb)
    run_dir = tmp_path / "runs" / "lm" / "tiny" / "none-p0-seed1"
    assert first.returncode == 1 and f"could not write {run_dir}/best.pt" in first.stderr, first.stderr
    assert not (run_dir / "checkpoint.pt").exists()
    before = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "step" for r in before)
    again = subprocess.run(argv + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    marker = {"kind": "restarted", "why": "no checkpoint to resume from: training from the start"}
    assert lines[:len(before)] == before and lines[len(before)] == marker  # the old attempt, then the marker
    steps = [(r["epoch"], r["step"]) for r in lines[len(before) + 1:] if r["kind"] == "step"]
    assert steps and len(steps) == len(set(steps))  # after the marker, each step once
