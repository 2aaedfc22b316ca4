"""Stopping a run cleanly: SIGTERM/SIGINT ask the trainer to checkpoint and stop; a second signal stops at once.
A worker or grid run started by another command stops with it (`stop_with_parent`)."""
import contextlib
import os
import signal
import threading
import time

from tqdm.auto import tqdm

from core.utils import remove_unfinished_writes


class Interrupted(Exception):
    """A run stopped by SIGTERM/SIGINT after saving its checkpoint; `--resume` continues it."""

    def __init__(self, checkpoint, signum=signal.SIGINT):
        super().__init__(f"stopped by a signal; the checkpoint {checkpoint} holds the run so far")
        self.checkpoint, self.signum = checkpoint, signum

    @property
    def exit_code(self):
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


_SIGNALS = {"pending": None, "deferring": 0, "seen": 0}  # seen: signals handled so far (pause_point waits on it)


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGTERM/SIGINT ask the trainer to save a checkpoint and stop after the current step; a second signal stops
    at once. Only in the main thread (signal handlers cannot be set elsewhere)."""
    def handler(signum, frame):
        _SIGNALS["seen"] += 1
        if trainer.stop_requested:  # at once: the last checkpoint stands (every write is atomic), no traceback
            remove_unfinished_writes()
            tqdm.write(f"second {signal.Signals(signum).name}: stopping at once; --resume continues from the last "
                       "checkpoint")
            os._exit(128 + signum)
        trainer.stop_requested, trainer.stop_signal = True, signum
        what = ("finishing the final test pass first (the run is then complete), then stopping"
                if getattr(trainer, "phase", None) == "test" else "saving a checkpoint after this step, then stopping")
        tqdm.write(f"{signal.Signals(signum).name}: {what} (send it again to stop at once)")

    with _signals_to(handler):
        yield


@contextlib.contextmanager
def _signals_to(handler):
    """SIGTERM and SIGINT go to `handler` inside the block, then to whatever took them before. Only in the main
    thread (signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


ENV_STOP_WITH_PARENT = "RNNREG_STOP_WITH_PARENT"  # set by benchmarks.select for its runs: the pid to outlive none


def stop_with_parent(parent=None, poll=1.0):
    """Send this process SIGTERM once `parent` (a pid; default: its parent now) is gone, so a worker or grid run
    whose launching command was killed stops (a training run after saving its checkpoint, see stop_on_signals)
    instead of running on as an orphan. A watcher thread polls the parent pid; Linux's PR_SET_PDEATHSIG is no
    substitute, as it fires when the launching *thread* ends (benchmarks.select launches from a thread pool)."""
    parent = os.getppid() if parent is None else parent

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


class Stopped(Exception):
    """SIGINT/SIGTERM reached a command outside training (loading data, writing a table, planning): the command
    stops at the next safe point and exits 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self):
        return 128 + self.signum


def _command_handler(signum, frame):
    _SIGNALS["seen"] += 1
    if _SIGNALS["pending"] is not None:  # the second signal: at once (every write is atomic: no half file)
        remove_unfinished_writes()
        tqdm.write(f"second {signal.Signals(signum).name}: stopping at once; no file is half-written, and the same "
                   "command again writes what is missing (benchmarks.run: with --resume)")
        os._exit(128 + signum)
    _SIGNALS["pending"] = signum
    if not _SIGNALS["deferring"]:
        raise Stopped(signum)
    tqdm.write(f"{signal.Signals(signum).name}: finishing the write under way, then stopping (send it again to "
               "stop at once)")


@contextlib.contextmanager
def command_signals():
    """SIGINT/SIGTERM anywhere in a command raise Stopped (inside deferred_signals: once its writes are done);
    a second signal exits at once. The trainer's own handling (stop_on_signals) takes over during training."""
    _SIGNALS["pending"] = None
    with _signals_to(_command_handler):
        yield


@contextlib.contextmanager
def deferred_signals():
    """Writes that belong together (a table's json, md and png; the overview): a signal arriving inside waits
    until they are all written, then stops the command."""
    _SIGNALS["deferring"] += 1
    try:
        yield
    finally:
        _SIGNALS["deferring"] -= 1
    if not _SIGNALS["deferring"] and _SIGNALS["pending"] is not None:
        raise Stopped(_SIGNALS["pending"])


ENV_PAUSE_AT = "RNNREG_PAUSE_AT"  # tests: a named point where the command waits for a signal


def pause_point(name):
    """Where a test sends its signal: with $RNNREG_PAUSE_AT naming this point, say so and wait for one (real
    signals at the named points, not mocks)."""
    if os.environ.get(ENV_PAUSE_AT) == name:
        seen = _SIGNALS["seen"]
        print(f"paused at {name}", flush=True)
        while _SIGNALS["seen"] == seen:  # until a handler has run (a short sleep: no race with its arrival)
            time.sleep(0.05)
