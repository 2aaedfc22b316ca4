"""Stopping a run cleanly: SIGTERM/SIGINT ask the trainer to checkpoint and stop; a second signal stops at once.
A worker or grid run started by another command stops with it (`stop_with_parent`)."""
import contextlib
import os
import signal
import threading
import time

from tqdm.auto import tqdm


class Interrupted(Exception):
    """A run stopped by SIGTERM/SIGINT after saving its checkpoint; `--resume` continues it."""

    def __init__(self, checkpoint):
        super().__init__(f"stopped by a signal; the checkpoint {checkpoint} holds the run so far")
        self.checkpoint = checkpoint


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGTERM/SIGINT ask the trainer to save a checkpoint and stop after the current step; a second signal stops
    at once. Only in the main thread (signal handlers cannot be set elsewhere)."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping without a checkpoint")
        trainer.stop_requested = True
        what = ("finishing the final test pass first (the run is then complete), then stopping"
                if getattr(trainer, "phase", None) == "test" else "saving a checkpoint after this step, then stopping")
        tqdm.write(f"{signal.Signals(signum).name}: {what} (send it again to stop at once)")

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
