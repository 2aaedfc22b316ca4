"""Runs a linked plan (benchmarks.jobs.plan): a job starts when a slot of its executor is free and what it waits
for has ended; a scheme's p is chosen as soon as its selection grid is complete; SIGINT/SIGTERM stop the running
jobs at a checkpoint. benchmarks.grid and benchmarks.paper run their plans with it."""
import signal
import sys
import time
from pathlib import Path

from benchmarks.jobs import plan as planning
from benchmarks.jobs.estimates import estimate, minutes
from benchmarks.jobs.config import preset_config
from benchmarks.jobs.display import final_metric, schemes_tables
from benchmarks.jobs.runner import build_parser, check_mergeable, run_label, validate
from benchmarks.jobs.selection import choose, collect, write_selection
from benchmarks.tables.format import counted
from benchmarks.tables.labels import P_BY_HAND, SELECTION_SUFFIX
from tasks.base import TASKS


def check_jobs(jobs, settings, local=True):
    """Every distinct job's command through the runner's own checks, before anything runs (a bad --set key, a
    preset without dropout, a missing package, a table of another config where its rows would land). A cluster's
    jobs are checked on the CPU here: their device is resolved where they run."""
    seen = set()
    for job in jobs:
        key = (job.task, job.variant, job.kind)
        if key in seen:
            continue
        seen.add(key)
        probe = job if job.p is not None else planning.replace(job, p=(0.1, None), p_from=P_BY_HAND)
        argv = planning.job_argv(probe, settings)
        if not local:
            argv += ["--device", "cpu", "--precision", "fp32"]
        parser = build_parser()
        parser.error = _raise  # the grid's own parser names the problem, not benchmarks.run's
        args = parser.parse_args(argv)
        task_cls = validate(args, parser)
        if local:  # a table of another config where the rows would land stops the grid here
            check_mergeable(task_cls, args, run_label(args))


ENDED = ("finished", "failed", "skipped", "stopped")
STOPPED_BY_A_SIGNAL = {130: "SIGINT", 143: "SIGTERM"}  # benchmarks.run's exit after saving its checkpoint


def _raise(message):
    raise ValueError(message)


class Grid:
    """Runs a linked plan: a job starts when a slot is free and what it waits for has ended; selection jobs'
    choices are made as soon as their grid is complete."""

    def __init__(self, jobs, settings, executor, slots, display, device_name=None):
        self.jobs, self.settings, self.executor, self.slots, self.display = jobs, settings, executor, slots, display
        self.status = ["queued"] * len(jobs)  # queued, running, finished, failed, skipped, stopped
        self.handles, self.started, self.ended, self.notes = {}, {}, {}, {}
        self.tables = {}  # choice -> the selection table its p came from
        self.stopping, self.stop_signal = False, signal.SIGINT
        self.began = time.time()
        device = device_name or settings.device
        self.estimates = [estimate(settings.out, job, device, settings.precision)[0]
                          for job in jobs]  # None: unknown

    def progress(self):
        """'3 of 12 jobs done, about 84 min left' (the recorded wall times of what is queued or running, spread
        over the slots; unknown estimates left out, and said)."""
        done = sum(s in ("finished", "failed", "skipped") for s in self.status)
        left, unknown = 0.0, 0
        for i, status in enumerate(self.status):
            if status in ("queued", "running"):
                if self.estimates[i] is None:
                    unknown += 1
                else:
                    left += max(self.estimates[i] - (time.time() - self.started[i] if status == "running" else 0), 0)
        text = f"{done} of {len(self.jobs)} jobs done"
        if done == len(self.jobs):
            return text
        if unknown == len(self.jobs) - done:
            return text + ", the time left unknown (no recorded run of these jobs)"
        text += f", about {minutes(left / self.slots)} left"
        if unknown:
            text += f" and {counted(unknown, 'job')} with no recorded time"
        return text

    def run(self):
        self._handle_signals()
        for i in range(len(self.jobs)):
            self._skip_if_done(i)
        while not self._all_ended():
            self._make_choices()
            self._start_ready()
            self._poll()
            self.display.refresh(self)
            if self.stopping:
                self._stop_running()
                break
            time.sleep(1)
        self.display.refresh(self, final=True)

    def _handle_signals(self):
        def handler(signum, _):
            print(f"\n{signal.Signals(signum).name}: stopping the running jobs (each saves a checkpoint); run the "
                  "same command again to continue", file=sys.stderr, flush=True)
            self.stopping, self.stop_signal = True, signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def _all_ended(self):
        return all(s in ENDED or self.waits_for_a_stopped_job(i) for i, s in enumerate(self.status))

    def waits_for_a_stopped_job(self, i):
        """Queued behind a job that was stopped (a signal to that job alone): it waits for the next run of the
        command."""
        return self.status[i] == "queued" and any(self.status[a] == "stopped" or self.waits_for_a_stopped_job(a)
                                                  for a in self.jobs[i].after)

    def _set(self, i, status, note=""):
        self.status[i] = status
        self.notes[i] = note
        self.display.update(i, self)

    def _skip_if_done(self, i):
        job = self.jobs[i]
        if job.p is not None and planning.done_before(job, self.settings):
            self._set(i, "skipped", "finished before: " + final_metric(job, self.settings))

    def _make_choices(self):
        for key in {j.choice for j in self.jobs if j.kind == "run" and j.p is None}:
            waiting = [i for i, j in enumerate(self.jobs) if j.choice == key and j.kind != "select" and j.p is None
                       and self.status[i] == "queued"]
            grid = [i for i, j in enumerate(self.jobs) if j.choice == key and j.kind == "select"]
            if not waiting or any(self.status[i] in ("queued", "running", "stopped") for i in grid):
                continue
            failed = [i for i in grid if self.status[i] == "failed"]
            if failed:
                for i in waiting:
                    self._set(i, "failed", f"its selection jobs failed (#{', #'.join(str(f + 1) for f in failed)})")
                continue
            try:
                p, table = self._choose(self.jobs[grid[0]])
            except ValueError as err:  # e.g. a choice between points of two machines that one seed cannot tell
                for i in waiting:
                    self._set(i, "failed", str(err))
                continue
            for i in waiting:
                self.jobs[i] = planning.replace(self.jobs[i], p=p)
                self.notes[i] = f"p={self.jobs[i].rate()} chosen on validation"
                self._skip_if_done(i)
            self.tables[key] = table

    def _choose(self, job):
        """The selection of `job`'s scheme from its grid runs (and the points of the selection table written before),
        written to results/<task>/<label>-selection.{json,md}; (p, cell) and that table."""
        task_cls = TASKS[job.task]
        config = preset_config(task_cls, job.preset, self.settings.epochs, dict(job.overrides))
        target = Path(self.settings.out) / job.task / f"{job.label}{SELECTION_SUFFIX}"
        runs, notes = collect(task_cls, job.preset, [Path(self.settings.selection_out)],
                                     target.with_suffix(".json"), config, job.seed, self.settings.precision)
        decisions = write_selection(target, task_cls, job.preset, choose(task_cls, runs), notes, config)
        decision = decisions[job.variant]
        return (decision["dropout"], decision["zoneout_cell"]), f"{target}.md"

    def _start_ready(self):
        for i, job in enumerate(self.jobs):
            if len(self.handles) >= self.slots or self.stopping:
                return
            if self.status[i] != "queued" or job.p is None:
                continue
            if any(self.status[a] == "failed" for a in job.after):
                self._set(i, "failed", "a job it waits for failed")
            elif all(self.status[a] in ("finished", "skipped") for a in job.after):
                argv = planning.job_argv(job, self.settings, self.tables.get(job.choice))
                self.handles[i] = self.executor.submit(argv, planning.log_path(job, self.settings))
                self.started[i] = time.time()
                self._set(i, "running")

    def _poll(self):
        for i, handle in list(self.handles.items()):
            code = handle.poll()
            if code is None:
                continue
            del self.handles[i]
            self.ended[i] = time.time()
            if code == 0:
                self._finished(i)
                schemes_tables(self.jobs, self.settings.out)
            elif code in STOPPED_BY_A_SIGNAL:  # someone signalled the job alone: it saved its checkpoint
                self._ended_by_signal(i, code, f"a {STOPPED_BY_A_SIGNAL[code]} to the job alone: ")
            else:
                self._set(i, "failed", f"exit {code} after {self._took(i)}")

    def _took(self, i):
        return f"{(self.ended[i] - self.started[i]) / 60:.1f} min"

    def _finished(self, i):
        self._set(i, "finished", f"{final_metric(self.jobs[i], self.settings)} ({self._took(i)})")

    def _ended_by_signal(self, i, code, how=""):
        """A job a signal ended: finished if its row landed first (a final test pass finishes), else stopped."""
        if code == 0 or planning.done_before(self.jobs[i], self.settings):
            self._finished(i)
            return
        kept = (planning.job_run_dir(self.jobs[i], self.settings) / "checkpoint.pt").exists()
        self._set(i, "stopped", how + ("resumes from its checkpoint when the command is run again" if kept else
                                       "before its first checkpoint: starts again when the command is run again"))

    def _stop_running(self):
        for handle in self.handles.values():
            handle.stop()
        for i, handle in list(self.handles.items()):
            code = handle.wait()
            self.ended[i] = time.time()
            self._ended_by_signal(i, code)
        self.handles.clear()
        schemes_tables(self.jobs, self.settings.out)
