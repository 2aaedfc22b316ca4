"""The whole benchmark in one command: every task's with-versus-without table and the cross-task schemes table,
each scheme's p chosen on validation first, several seeds, jobs in parallel, on this machine or a cluster.

    python -m benchmarks.grid --dry-run                                  # the plan and its time, nothing trained
    python -m benchmarks.grid --jobs 2                                   # every task: none and zaremba
    python -m benchmarks.grid --user-dir my_schemes --variants mine      # none, zaremba and your scheme, everywhere
    python -m benchmarks.grid --tasks speech --variants all --grid 0.1,0.2,0.35 --grid zoneout=0.05/0.5
    python -m benchmarks.grid --preset tiny --variants mine --p mine=0.1 # p fixed by hand (said in the tables)
    python -m benchmarks.grid --tasks lm,mt --preset cpu --rerun       # the rows again, from this commit and machine
    python -m benchmarks.grid --executor slurm --partition gpu --gpus-per-job 1 --device cuda

Each job is an ordinary `benchmarks.run --resume` process with its own run dir and a log under
<run-dir>/grid-logs/; its runs land in results/<task>/<label>.json under the table's lock as it ends. A scheme
whose p the preset does not fix (see --list's `scheme_dropout`) is first trained with `--valid-only` at each grid
point on the task's selection seed (test never read); the best validation metric chooses p (benchmarks.select's
rule, written to results/<task>/<label>-selection.md) and its seed jobs then run at that p. Running the same
command again skips finished jobs and resumes the others.
"""
import argparse
import os
import signal
import sys
import time
from pathlib import Path

from benchmarks import plan as planning, run, select
from benchmarks.runconfig import check_distinct, check_preset, declared_keys, parse_seeds, set_flag_named
from benchmarks.cli import add_user_dir_flag, load_task_registry
from benchmarks.executors import EXECUTORS, make_executor
from benchmarks.grid_report import Display, final_metric, schemes_tables, summary_lines, verdicts
from core import SCHEMES
from core.utils import did_you_mean
from tasks.base import TASKS


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", help="comma list of tasks (default: every registered task)")
    add_user_dir_flag(p)
    p.add_argument("--variants", default="", help="schemes besides none and zaremba (which always run), comma "
                                                  "list; 'all' for every registered scheme")
    p.add_argument("--seeds", help="comma list (default: each task's default seeds, e.g. speech's seven folds)")
    p.add_argument("--preset", help="the preset of every task (default: each task's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as benchmarks.run (every task)")
    p.add_argument("--epochs", type=int, help="as benchmarks.run: shortened runs, their own tables (<preset>-e<N>)")
    p.add_argument("--p", metavar="SCHEME=P,...", help="fix these schemes' p by hand instead of choosing it on "
                                                       "validation (zoneout: P/PC); said in the tables")
    p.add_argument("--select", default="", metavar="SCHEME,...",
                   help="choose these schemes' p on validation even where the preset fixes it ('all': every scheme "
                        "but none and naive, which runs at the preset's p)")
    p.add_argument("--grid", action="append", default=[], metavar="[SCHEME=]P,P,...",
                   help="selection grid points (default 0.1,0.2,0.35,0.5,0.65; zoneout 0.05/0.5,0.1/0.5,0.2/0.5); "
                        "SCHEME=... for one scheme (repeatable)")
    p.add_argument("--jobs", type=int, help="jobs at once (default: the cores / --threads; slurm: 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--precision", default="auto", help="as benchmarks.run")
    p.add_argument("--data-dir", help="dataset root (default: $RNNREG_DATA_DIR, else ~/.cache/rnnreg)")
    p.add_argument("--custom-data", action="store_true", help="as benchmarks.run: data that fails the checksums")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--run-dir", default="runs", help="run dirs and the grid's logs (default: runs/)")
    p.add_argument("--rerun", action="store_true",
                   help="train again the rows in the tables that the checked-out commit did not make on this "
                        "machine (uncommitted code, other commits, another machine), replacing them as they land; "
                        "the same command again skips the rows it made. Selection choices are kept")
    p.add_argument("--dry-run", action="store_true", help="print every job, its dependencies and time; train nothing")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local (default: processes here), slurm (submitit), submitit-local (submitit on this machine)")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--time-min", type=int, default=24 * 60, help="slurm / submitit time limit per job (minutes)")
    p.add_argument("--gpus-per-job", type=int, default=0, help="slurm GPUs per job")
    return p


def parse_grids(items):
    """['0.1,0.2', 'zoneout=0.05/0.5'] -> {None: [(0.1, None), (0.2, None)], 'zoneout': [(0.05, 0.5)]}."""
    grids = {}
    for item in items:
        scheme, sep, texts = item.rpartition("=")
        points = [select.parse_point(t) for t in texts.split(",") if t.strip()]
        check_distinct([f"{p:g}" + (f"/{cell:g}" if cell is not None else "") for p, cell in points],
                       f"--grid {item}")
        grids[scheme if sep else None] = points
    return grids


def variants_of(text):
    named = [v.strip() for v in text.split(",") if v.strip()]
    named = list(SCHEMES) if named == ["all"] else named
    check_distinct(named, "--variants")
    unknown = [v for v in named if v not in SCHEMES]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}{did_you_mean(unknown, SCHEMES)}; registered schemes: "
                         f"{', '.join(SCHEMES)} (your own: --user-dir)")
    return ["none", "zaremba"] + [v for v in named if v not in ("none", "zaremba")]


def reselected(text, variants):
    named = [v.strip() for v in text.split(",") if v.strip()]
    named = [v for v in variants if v not in ("none", "naive")] if named == ["all"] else named
    if set(named) - set(variants) or {"none", "naive"} & set(named):
        raise ValueError(f"--select {text}: give schemes of --variants other than none and naive ({', '.join(variants)})")
    return set(named)


def make_plan(args, parser):
    """(jobs, settings): every task's selection, seed and ensemble jobs; a bad flag is a parser error."""
    load_task_registry(args, parser)
    try:
        variants = variants_of(args.variants)
        names = [t.strip() for t in args.tasks.split(",")] if args.tasks else sorted(TASKS)
        for name in names:
            run.get_task(name)
        fixed = run.parse_fixed_p(args.p, variants)
        reselect = reselected(args.select, variants)
        given_seeds = parse_seeds(args.seeds) if args.seeds else None
        device = run.pick_device(args.device)
        precision = run.resolve_precision(args.precision, device)
        grids = parse_grids(args.grid)
    except ValueError as err:
        parser.error(str(err))
    extra = [a for d in args.user_dir or [] for a in ("--user-dir", d)] + ["--threads", str(args.threads),
                                                                            "--device", str(args.device)]
    extra += ["--data-dir", args.data_dir] if args.data_dir else []
    extra += ["--custom-data"] * args.custom_data + ["--no-download"] * args.no_download
    settings = planning.Settings(out=args.out, run_dir=args.run_dir, epochs=args.epochs, sets=tuple(args.set),
                                 extra=tuple(extra), precision=precision, device=str(device), grids=grids,
                                 rerun=planning.rerun_key(device, args.executor == "local") if args.rerun else None)
    jobs = []
    for name in names:
        task_cls = TASKS[name]
        preset = args.preset or task_cls.default_preset
        try:
            check_preset(task_cls, preset)
        except ValueError as err:
            parser.error(str(err))
        overrides = run.parse_overrides(args.set, task_cls.presets[preset], f"{name}/{preset}", parser,
                                         declared_keys(task_cls))
        config = run.preset_config(task_cls, preset, args.epochs, overrides)
        try:
            task_cls.check_ranges(config)
        except ValueError as err:
            parser.error(set_flag_named(err, overrides))
        ensemble = config.get("ensemble") if args.seeds is None else None
        seeds = given_seeds or task_cls.default_seeds(config) or list(range(1, (ensemble or 1) + 1))
        jobs += planning.plan_task(task_cls, preset, variants, seeds, overrides, settings, fixed, ensemble, reselect)
    jobs = planning.link(jobs)
    check_jobs(jobs, settings)
    return jobs, settings, planning.device_name(args.device)


def check_jobs(jobs, settings):
    """Every distinct job's command through the runner's own checks, before anything runs (a bad --set key, a
    preset without dropout, a missing package)."""
    seen = set()
    for job in jobs:
        key = (job.task, job.variant, job.kind)
        if key in seen:
            continue
        seen.add(key)
        probe = job if job.p is not None else planning.replace(job, p=(0.1, None), p_from="set by hand (--p)")
        parser = run.build_parser()
        run.validate(parser.parse_args(planning.job_argv(probe, settings)), parser)


class Grid:
    """Runs a linked plan: a job starts when a slot is free and what it waits for has ended; selection jobs'
    choices are made as soon as their grid is complete."""

    def __init__(self, jobs, settings, executor, slots, display):
        self.jobs, self.settings, self.executor, self.slots, self.display = jobs, settings, executor, slots, display
        self.status = ["queued"] * len(jobs)  # queued, running, finished, failed, skipped
        self.handles, self.started, self.notes = {}, {}, {}
        self.tables = {}  # choice -> the selection table its p came from
        self.stopping = False

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
            self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def _all_ended(self):
        return all(s in ("finished", "failed", "skipped") for s in self.status)

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
            waiting = [i for i, j in enumerate(self.jobs) if j.choice == key and j.kind != "select" and j.p is None]
            grid = [i for i, j in enumerate(self.jobs) if j.choice == key and j.kind == "select"]
            if not waiting or any(self.status[i] in ("queued", "running") for i in grid):
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
        config = run.preset_config(task_cls, job.preset, self.settings.epochs, dict(job.overrides))
        target = Path(self.settings.out) / job.task / f"{job.label}-selection"
        runs, notes = select.collect(task_cls, job.preset, [Path(self.settings.selection_out)],
                                     target.with_suffix(".json"), config, job.seed, self.settings.precision)
        decisions = select.write_selection(target, task_cls, job.preset, select.choose(task_cls, runs), notes, config)
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
            took = f"{(time.time() - self.started[i]) / 60:.1f} min"
            if code == 0:
                self._set(i, "finished", f"{final_metric(self.jobs[i], self.settings)} ({took})")
                schemes_tables(self.jobs, self.settings.out)
            else:
                self._set(i, "failed", f"exit {code} after {took}")

    def _stop_running(self):
        for handle in self.handles.values():
            handle.stop()
        for i, handle in list(self.handles.items()):
            handle.wait()
            self._set(i, "queued", "stopped (checkpoint saved): resumes when the command is run again")
        self.handles.clear()


def executor_parameters(args):
    parameters = {"timeout_min": args.time_min, "cpus_per_task": args.threads, "gpus_per_node": args.gpus_per_job}
    return {**parameters, **({"slurm_partition": args.partition} if args.partition else {})}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
        parser.error("--threads and --jobs must be >= 1")
    slots = args.jobs or (16 if args.executor == "slurm" else max(1, (os.cpu_count() or 1) // args.threads))
    try:
        jobs, settings, device = make_plan(args, parser)
        planning.print_plan(jobs, settings, device, slots, args.executor, every_job=args.dry_run)
    except ValueError as err:  # a damaged table of --out, or a folder where it belongs
        parser.error(str(err))
    if args.dry_run:
        return 0
    try:
        executor = make_executor(args.executor, Path(args.run_dir) / "grid-submitit", executor_parameters(args))
    except ValueError as err:
        parser.error(str(err))
    grid = Grid(jobs, settings, executor, slots, Display())
    try:
        grid.run()
    except ValueError as err:  # a table damaged while the grid ran
        sys.exit(f"error: {err}")
    schemes_tables(jobs, args.out)
    print("\n".join(summary_lines(grid, settings)), flush=True)
    print("\n".join(verdicts(grid.jobs, args.out)), flush=True)
    if grid.stopping:
        return 130
    return 1 if "failed" in grid.status else 0


if __name__ == "__main__":
    sys.exit(main())
