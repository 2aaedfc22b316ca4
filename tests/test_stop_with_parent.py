"""A worker or grid run whose launching command is killed stops instead of running on as an orphan."""
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.jobs import selection
from core.interrupt import ENV_STOP_WITH_PARENT

ROOT = Path(__file__).resolve().parents[1]
CHILD = """import os, threading
from core.interrupt import stop_with_parent
stop_with_parent(poll=0.05)
print(os.getpid(), flush=True)
threading.Event().wait()"""


def test_a_process_whose_parent_is_gone_is_sent_sigterm():
    code = "import threading\nfrom core.interrupt import stop_with_parent\nstop_with_parent(parent=-1, poll=0.01)\n" \
           "threading.Event().wait()"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == -signal.SIGTERM


def test_a_worker_stops_when_its_launching_process_is_sigkilled():
    launcher = f"import subprocess, sys\nsubprocess.call([sys.executable, '-c', {CHILD!r}])"
    middle = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(middle.stdout.readline())
    try:
        middle.kill()
        middle.wait()
        readable, _, _ = select.select([middle.stdout], [], [], 120)
        assert readable and middle.stdout.read() == ""  # end of file: the child, the pipe's last writer, is gone
    finally:
        middle.stdout.close()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_select_tells_its_runs_to_stop_with_it_and_starts_each_in_its_own_session():
    check = (f"import os, sys\nsys.exit(os.environ['{ENV_STOP_WITH_PARENT}'] != '{os.getpid()}' or "
             f"os.getsid(0) == {os.getsid(0)})")
    assert selection.Runs().map([[sys.executable, "-c", check]]) == [0]
