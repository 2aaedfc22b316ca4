"""Stopping a run cleanly: SIGTERM/SIGINT ask the trainer to checkpoint and stop; a second signal stops at once."""
import contextlib
import signal
import threading

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
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                   "(send it again to stop at once)")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
