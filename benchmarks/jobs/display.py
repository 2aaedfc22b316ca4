"""What benchmarks.grid shows: the live overview (one line per job), the cross-task tables of the labels it ran,
the summary of failed jobs with the command that reruns each, and where each scheme stands (the tables' verdicts)."""
import json
import re
import sys
import time
from pathlib import Path

from benchmarks.jobs import plan as planning
from benchmarks.jobs.estimates import minutes
from benchmarks.jobs.runner import runner_text
from benchmarks.tables.cross_task import selection_decisions, tuning_lines
from benchmarks.tables.effects import adjust_for_family, effects
from benchmarks.tables.labels import SELECTION_SUFFIX
from benchmarks.tables.format import LOWER_IS_BETTER, counted, interval_text
from benchmarks.tables.merge import load_runs, singles
from benchmarks.tables.task_table import group_runs
from benchmarks.tables.significance import verdict as significance_verdict
from benchmarks.tables.overview import write_overview
from core.monitor import read_log
from tasks.base import TASKS


def final_metric(job, settings):
    """'test ppl 112.34' (a selection run: 'valid ppl ...') from the job's result.json, else from its row in its
    table (a run trained into the table from another run dir), or ''."""
    if job.kind == "ensemble" or job.p is None:
        return ""
    path = planning.job_run_dir(job, settings) / "result.json"
    try:
        metrics = json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        entry = planning.table_entry(job, settings) if job.kind == "run" else None
        metrics = entry.get("metrics", {}) if entry else {}
    m = TASKS[job.task].main_metric
    key = f"test_{m}" if f"test_{m}" in metrics else f"valid_{m}"
    return f"{key.replace('_', ' ')} {metrics[key]:.2f}" if key in metrics else ""


def _epoch_progress(job, settings):
    """'epoch 3/15' from the run's log.jsonl while it trains."""
    path = planning.job_run_dir(job, settings) / "log.jsonl"
    try:
        records, torn = read_log(path)
    except (OSError, ValueError):  # no log yet, or a line inside it damaged: the job's status says enough
        return ""
    restarts = [i for i, r in enumerate(records) if r.get("kind") == "restarted"]  # an attempt without checkpoint
    epochs = sum(r.get("kind") == "epoch" for r in records[(restarts or [-1])[-1] + 1:])
    total = settings.epochs or TASKS[job.task].presets[job.preset]["epochs"]
    return f"epoch {epochs}/{total}" + (f" ({path.name}: torn last line skipped)" if torn else "")


class Display:
    """One line per job. On a terminal the block is redrawn in place every few seconds (running jobs show their
    epoch); otherwise a plain line is printed whenever a job changes state."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.drawn, self.last = 0, 0.0

    def _line(self, grid, i):
        job, status, note = grid.jobs[i], grid.status[i], grid.notes.get(i, "")
        if status == "running" and self.tty:
            note = _epoch_progress(job, grid.settings) or note
        return f"#{i + 1} {job.name()}: {status}" + (f", {note}" if note else "")

    def update(self, i, grid):
        if not self.tty:
            ended = grid.status[i] in ("finished", "failed")
            print(self._line(grid, i) + (f" [{grid.progress()}]" if ended else ""), file=self.stream, flush=True)

    def refresh(self, grid, final=False):
        if not self.tty or (not final and time.time() - self.last < 3):
            return
        self.last = time.time()
        lines = [self._line(grid, i) for i in range(len(grid.jobs))] + [grid.progress()]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)


def _labels(jobs):
    return sorted({(j.task, j.label) for j in jobs if j.kind != "select"})


def schemes_tables(jobs, out):
    """Regenerate results/README.md and the cross-task schemes tables: schemes.md for the default presets (as every
    run does) and schemes-<label>.md for each label of this grid that is not a task's default."""
    labels = {label for task, label in _labels(jobs) if label != TASKS[task].default_preset}
    for label in sorted(labels) or [None]:
        write_overview(out, label)


ERROR_LINE = re.compile(r"^(error: |[\w.]*(Error|Exception)\b)")


def last_error(log):
    """The last error line of a job's log (the runner's 'error: ...' or an exception's last line), or ''."""
    try:
        with open(log, "rb") as f:
            f.seek(max(f.seek(0, 2) - 65536, 0))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(tail) if ERROR_LINE.match(line.strip())), "")


def time_lines(grid):
    """The grid's wall time, and where the job time went: per task and per phase (jobs overlap, so the job
    times add up to more than the wall time when several ran at once)."""
    ran = [i for i in grid.ended if i in grid.started]
    if not ran:
        return []
    took = {i: grid.ended[i] - grid.started[i] for i in ran}
    phases = {"select": "selection runs", "run": "seed runs", "ensemble": "ensembles"}
    per_task, per_phase = {}, {}
    for i, seconds in took.items():
        job = grid.jobs[i]
        per_task[job.task] = per_task.get(job.task, 0.0) + seconds
        per_phase[phases[job.kind]] = per_phase.get(phases[job.kind], 0.0) + seconds
    split = lambda part: ", ".join(f"{k} {minutes(v)}" for k, v in sorted(part.items()))  # noqa: E731
    return [f"Took {minutes(time.time() - grid.began)} of wall time, {counted(grid.slots, 'job')} at a time; "
            f"job time per task: {split(per_task)}; per kind of job: {split(per_phase)}."]


def summary_lines(grid, settings):
    counts = {s: grid.status.count(s) for s in ("finished", "skipped", "failed", "stopped", "queued")}
    stopped = f"{counts['stopped']} stopped, " if counts["stopped"] else ""
    lines = ["", f"Grid: {counted(counts['finished'], 'job')} finished, {counts['skipped']} finished before, "
                 f"{counts['failed']} failed, {stopped}{counts['queued']} not run."] + time_lines(grid)
    for i, job in enumerate(grid.jobs):
        if grid.status[i] != "failed":
            continue
        lines.append(f"- failed: #{i + 1} {job.name()}: {grid.notes.get(i, '')}")
        if job.p is not None and i in grid.started:
            argv = planning.job_argv(job, settings, grid.tables.get(job.choice))
            log = planning.log_path(job, settings)
            cause = last_error(log)
            lines += ([f"  cause: {cause}"] if cause else []) + [f"  log: {log}",
                                                                f"  rerun: {runner_text(argv)}"]
    waiting = [i for i in range(len(grid.jobs)) if grid.waits_for_a_stopped_job(i)]
    if waiting:
        stopped = sorted({a for i in waiting for a in grid.jobs[i].after if grid.status[a] == "stopped"})
        lines.append(f"- not run: #{', #'.join(str(i + 1) for i in waiting)}, waiting for the stopped "
                     f"#{', #'.join(str(a + 1) for a in stopped)}")
    if counts["failed"] or counts["stopped"] or counts["queued"]:
        lines.append("Run the same grid command again to run what is missing (finished jobs are skipped).")
    return lines


def verdicts(jobs, out, carried=""):
    """A short paragraph: each scheme against none and zaremba on each task, with the verdicts of its table (the
    difference of seed means, its 95% interval over seeds, significant only by the tables' rule). `carried`: the
    grid's own flags, repeated in the commands it prints."""

    lines, tuning = ["", "Where each scheme stands (test main metric, the tables' verdicts):"], []
    for task_name, label in _labels(jobs):
        task = TASKS[task_name]
        runs = singles(load_runs(f"{out}/{task_name}/{label}.json"))
        selection = selection_decisions(Path(out) / task_name / f"{label}{SELECTION_SUFFIX}.json")
        tuning += tuning_lines([(f"{task_name}/{label}", task, runs)], {f"{task_name}/{label}": selection}, label,
                               carried)[2:-1]
        wanted = {(j.variant, j.p[0]) for j in jobs if (j.task, j.label) == (task_name, label) and j.p}
        rows = [r for r in effects(task, runs, group_runs(runs)) if r[2]["metric"] == task.main_metric]
        adjust_for_family(rows)  # the family of the table's main-metric comparisons, Holm-adjusted
        for (variant, p), (base, base_p), r in rows:
            if (variant, p) not in wanted or variant == "none":
                continue
            ci = f" {interval_text(r['seed_ci'])}" if "seed_ci" in r else ""
            said = significance_verdict(r)  # the one rule of every table
            if said == "significant":
                better = (r["diff"] < 0) == (task.main_metric in LOWER_IS_BETTER)
                said = f"significantly {'better' if better else 'worse'}"
            elif said != "not significant":
                said = f"no verdict ({said})"
            lines.append(f"- {task_name}/{label} {variant} p={p:g} vs {base} p={base_p:g}: {r['diff']:+.2f} "
                         f"{task.main_metric}{ci}: {said} ({counted(len(r['seeds']), 'paired seed')})")
    if len(lines) == 2:
        lines.append("- no comparisons yet (one needs none, or zaremba, and another scheme on the same seeds)")
    if tuning:
        lines += ["How each p was set (a scheme tuned on validation against one at a fixed p: its lead may be the "
                  "tuning):", *tuning]
    return lines
