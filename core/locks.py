"""Locks on files and folders, so that concurrent processes (on one machine, or on several sharing a filesystem)
never lose each other's work.

Both locks are `fcntl.flock` on a lock file: the kernel releases a lock when its holder dies, however it dies,
so a lock left by a killed process is never stale: the next process simply takes it. The lock file keeps the
holder's process id and host so that a refusal can name them.
"""
import contextlib
import fcntl
import os
import socket
from pathlib import Path


class Locked(Exception):
    """Another live process holds the lock; the message names it and the way on."""


def _open_lock(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _holder(fd):
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
    except OSError:
        return "an unknown process"


def _claim(fd):
    """Write who holds the lock into it (after taking it)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)


@contextlib.contextmanager
def table_lock(table):
    """Hold `.<table>.lock` (beside a results table) around its read, merge and write: waits for other writers."""
    fd = _open_lock(Path(table).with_name(f".{Path(table).name}.lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _claim(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def run_dir_lock_file(run_dir):
    """Beside the run dir, not in it: --overwrite moves the run dir aside while the lock stays put."""
    return Path(run_dir).parent / f".{Path(run_dir).name}.lock"


def lock_run_dir(run_dir):
    """Take the lock of `run_dir` for as long as this process runs (or until `release`); raise Locked naming the
    holder when another live process has it. Returns the lock's file descriptor."""
    fd = _open_lock(run_dir_lock_file(run_dir))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise Locked(f"{run_dir} is in use by {holder}: a second launch of the same run would write into the same "
                     "files. Wait for it to finish (or stop it), then run again with --resume") from None
    _claim(fd)
    return fd


def release(fd):
    os.close(fd)
