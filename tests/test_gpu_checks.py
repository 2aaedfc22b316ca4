""".ci/gpu-checks, the one prepared command for a lent GPU, run here as its dry run (every step on the CPU with the
tiny preset): the archive it leaves under $OUT, its exit trap, its file count and the sum of its timeouts."""
import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "gpu-checks"
STEPS = ["env", "cuda-tests", "speed", "table1-small", "medium-2-epochs", "large-2-epochs", "medium-full"]
DATA = Path(os.environ.get("RNNREG_DATA_DIR", "/nonexistent"))
needs_ptb = pytest.mark.skipif(not (DATA / "ptb" / "ptb.train.txt").is_file(),
                               reason="the dry run trains on the canonical PTB under $RNNREG_DATA_DIR")


def start(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECKS_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    return subprocess.Popen(["bash", str(SCRIPT), "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def finish(process, timeout=300):
    try:
        output = process.communicate(timeout=timeout)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return output


def read_member(out, name):
    with tarfile.open(out / "gpu-checks.tar.gz") as tar:
        return tar.extractfile("./" + name).read().decode()


def test_the_step_timeouts_add_up_to_at_most_540_seconds():
    """Within the 600 s of one device call, with room for the last step's grace and the archive."""
    text = SCRIPT.read_text()
    steps = re.findall(r"^step (\S+) (\d+) ", text, re.M)
    assert [name for name, _ in steps] == STEPS
    assert sum(int(cap) for _, cap in steps) <= 540
    assert len(re.findall(r"^\s*timeout ", text, re.M)) == 1  # the one in step(): no step escapes the caps
    assert int(re.search(r"GPU_CHECKS_SECONDS:-(\d+)", text).group(1)) <= 450  # about 7 minutes in all


@needs_ptb
def test_the_dry_run_brings_back_one_archive_with_the_evidence_and_no_checkpoints(tmp_path):
    process = start(tmp_path)
    output = finish(process)
    assert process.returncode == 0, output
    out, work = tmp_path / "out", tmp_path / "work"
    sent = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in sent) == ["gpu-checks.tar.gz", "summary.txt"] and len(sent) <= 6
    with tarfile.open(out / "gpu-checks.tar.gz") as tar:
        names = [name.removeprefix("./") for name in tar.getnames()]
    # the work dir holds checkpoints and TensorBoard files: the archive leaves them out
    assert list(work.rglob("*.pt")) and list(work.rglob("events.out.tfevents*"))
    assert not [n for n in names if n.endswith(".pt") or "tfevents" in n]
    env = read_member(out, "logs/env.log")
    assert re.search(r"^torch \d", env, re.M) and re.search(r"^device cpu", env, re.M)
    summary = (out / "summary.txt").read_text()
    assert all(re.search(rf"^{step}: exit 0 in \d+s", summary, re.M) for step in STEPS), summary
    assert {f"logs/{step}.log" for step in STEPS} <= set(names)
    assert "results/table1/lm/tiny.md" in names and "results/speed/lm/speed.md" in names
    for step in ("medium-2-epochs", "large-2-epochs", "medium-full"):
        assert f"runs/{step}/lm/tiny/zaremba-p0.3-seed1/log.jsonl" in names
        assert f"runs/{step}/lm/tiny/zaremba-p0.3-seed1/result.json" in names


def test_a_signal_stops_the_running_step_and_still_brings_back_the_archive(tmp_path):
    """The exit trap: SIGTERM to the script while a step runs stops that step at once and archives what exists."""
    process = start(tmp_path)
    try:
        for line in process.stdout:
            if line.startswith("cuda-tests: started"):
                process.send_signal(signal.SIGTERM)
                break
    finally:
        finish(process, timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert re.search(r"^env: exit 0 ", summary, re.M) and "stopped by SIGTERM during step cuda-tests" in summary
    log = read_member(out, "logs/cuda-tests.log")
    assert "-m pytest" in log and "passed" not in log  # the tests were stopped, not waited for
    assert read_member(out, "summary.txt") == summary
