"""Watching a run: a progress bar named after the run, a log.jsonl line every few steps (flushed, so
`tail -f runs/.../log.jsonl` shows it live) and TensorBoard event files in the run dir
(`tensorboard --logdir runs`).

The bar prints carriage-return updates only on a terminal; when stderr is redirected (a log file, CI) it
prints a plain line every `plain_every` of the pass instead. Its rate counts only the steps this process ran,
so a resumed run shows its real speed.
"""
import json
import os
import sys
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from core.utils import write_error


class PlainBar:
    """A progress 'bar' for logs: one line every `every` (a fraction) of the pass, with the run's rate."""

    def __init__(self, total, desc, initial=0, every=0.1, stream=None):
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.every, self.stream, self.started = every, stream or sys.stderr, time.time()
        self.next_at, self.postfix = self._next(initial), ""

    def _next(self, n):
        step = max(1, int(self.total * self.every)) if self.total else 1
        return (n // step + 1) * step

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n=1):
        self.n += n
        if self.total and self.n >= self.next_at:
            self.next_at = self._next(self.n)
            rate = (self.n - self.initial) / max(time.time() - self.started, 1e-9)
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), {rate:.2f} it/s"
                  + (f", {self.postfix}" if self.postfix else ""), file=self.stream, flush=True)

    def close(self):
        pass


def progress_bar(total, desc, initial=0, enabled=True, plain_every=0.1):
    """tqdm on a terminal, PlainBar otherwise; a disabled tqdm when not `enabled`."""
    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True, mininterval=1.0,
                    disable=not enabled)
    return PlainBar(total, desc, initial, every=plain_every)


def rounded(record, digits=6):
    """A log record with its floats cut to `digits` significant digits (console and log.jsonl stay readable;
    a small learning rate keeps its value)."""
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in record.items()}


def read_log(path):
    """The records of a log.jsonl and whether its last line is torn (a write cut short, or one still going on):
    that line is skipped, not parsed."""
    whole, _, torn = Path(path).read_text().rpartition("\n")
    return [json.loads(line) for line in whole.splitlines() if line], bool(torn)


def append_line(path, line):
    """Append `line` whole or not at all: bytes a refused write left (a full disk, a file-size limit) are cut
    away before the error goes on, so the file always ends with a whole line."""
    with open(path, "ab", buffering=0) as f:  # unbuffered: truncate is not a flush of the refused bytes again
        start = f.seek(0, os.SEEK_END)
        try:
            data = memoryview(line.encode())
            while data:
                data = data[f.write(data):]  # a write may land only part of the bytes before it fails
        except OSError:
            f.truncate(start)
            raise


def drop_torn_line(path):
    """Cut a log torn by an earlier process (a lost machine, a version without append_line) back to its last
    whole line, so the next record starts a line of its own; says so."""
    if not path.exists():
        return
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        os.truncate(path, whole)
        warnings.warn(f"{path} ended in a torn line, the rest of a write cut short "
                      f"({data[whole:whole + 60].decode(errors='replace')}...): dropped it before appending")


class Monitor:
    """log.jsonl lines (steps and epochs) and TensorBoard scalars and text of one run, written by rank 0 only."""

    def __init__(self, run_dir, enabled=True, tensorboard=True):
        self.run_dir, self.enabled = run_dir, enabled and run_dir is not None
        self.writer, self.appended = None, False
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), flush_secs=30)

    def _append(self, record):
        path = self.run_dir / "log.jsonl"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.appended:
                drop_torn_line(path)
            append_line(path, json.dumps(rounded(record)) + "\n")
        except OSError as err:
            raise write_error(path, err) from err
        self.appended = True

    def note(self, record):
        """A line of its own in log.jsonl (e.g. where a resumed run continued)."""
        if self.enabled:
            self._append(record)

    def config(self, config, label):
        if self.writer is not None:
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(config.items()))
            self.writer.add_text("config", f"**{label}**\n\n| key | value |\n|---|---|\n{rows}", 0)

    def step(self, global_step, record):
        """Every log_interval steps: {"epoch", "step", train metrics so far, "lr", "tok_s", "grad_norm"}."""
        if not self.enabled:
            return
        self._append({"kind": "step", "global_step": global_step, **record})
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"step/{key}", value, global_step)

    def epoch(self, record, examples=()):
        if not self.enabled:
            return
        self._append({"kind": "epoch", **record})
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    split, _, name = key.partition("_")
                    self.writer.add_scalar(f"{name}/{split}" if name else key, value, record["epoch"])
            if examples:
                self.writer.add_text("examples/valid", "\n\n".join(f"    {line}" for line in examples),
                                     record["epoch"])
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
