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
import shlex
import sys
from pathlib import Path

from benchmarks.jobs import plan as planning
from benchmarks.jobs.config import (check_distinct, check_preset, declared_keys, parse_fixed_p, parse_overrides,
                                    parse_point, parse_seeds, preset_config, set_flag_named)
from benchmarks.jobs.display import Display, schemes_tables, summary_lines, verdicts
from benchmarks.jobs.executors import EXECUTORS, make_executor
from benchmarks.jobs.flags import (add_config_flags, add_data_flags, add_device_flag, add_precision_flag,
                                   add_threads_flag, add_user_dir_flag, load_task_registry, passed_on,
                                   resolve_jobs_device)
from benchmarks.jobs.scheduler import Grid, check_jobs
from core import SCHEMES
from core.interrupt import Stopped, command_signals, deferred_signals
from core.utils import did_you_mean
from tasks.base import TASKS, get_task


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", help="comma list of tasks (default: every registered task)")
    add_user_dir_flag(p)
    p.add_argument("--variants", default="", help="schemes besides none and zaremba (which always run), comma "
                                                  "list; 'all' for every registered scheme")
    p.add_argument("--seeds", help="comma list (default: each task's default seeds, e.g. speech's seven folds)")
    p.add_argument("--preset", help="the preset of every task (default: each task's default)")
    add_config_flags(p, "every task's preset")
    p.add_argument("--select", default="", metavar="SCHEME,...",
                   help="choose these schemes' p on validation even where the preset fixes it ('all': every scheme "
                        "but none and naive, which runs at the preset's p)")
    p.add_argument("--grid", action="append", default=[], metavar="[SCHEME=]P,P,...",
                   help="selection grid points (default 0.1,0.2,0.35,0.5,0.65; zoneout 0.05/0.5,0.1/0.5,0.2/0.5); "
                        "SCHEME=... for one scheme (repeatable)")
    p.add_argument("--jobs", type=int, help="jobs at once (default: the cores / --threads; slurm: 16)")
    add_threads_flag(p, default=1, per="job")
    add_device_flag(p, jobs=True)
    add_precision_flag(p)
    add_data_flags(p)
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
        try:
            points = [parse_point(t) for t in texts.split(",") if t.strip()]
        except ValueError as err:
            raise ValueError(f"--grid {item}: {err}") from None
        check_distinct([f"{p:g}" + (f"/{cell:g}" if cell is not None else "") for p, cell in points],
                       f"--grid {item}")
        grids[scheme if sep else None] = points
    return grids


def unused_grids(grids, jobs):
    """Why a --grid would be ignored (no scheme of the plan is chosen on validation, or not the one it names), or
    None: a flag that changes nothing is an error, not a silence."""
    chosen = sorted({j.variant for j in jobs if j.kind == "select"})
    named = sorted(s for s in grids if s is not None)
    if grids and not chosen:
        which = f"--grid {', '.join(named)}=..." if named else "--grid"
        return (f"{which}: no scheme of this plan is chosen on validation (none has p 0, and the others take their "
                "preset's p or --p): add a scheme without a preset p with --variants, or choose a preset scheme's "
                "p on validation with --select SCHEME")
    missing = [s for s in named if s not in chosen]
    if missing:
        return (f"--grid {', '.join(missing)}=...: not chosen on validation in this plan (chosen: "
                f"{', '.join(chosen)}); add it with --variants, or --select it")
    return None


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
            get_task(name)
        fixed = parse_fixed_p(args.p, variants)
        reselect = reselected(args.select, variants)
        given_seeds = parse_seeds(args.seeds) if args.seeds else None
        grids = parse_grids(args.grid)
    except ValueError as err:
        parser.error(str(err))
    device, precision = resolve_jobs_device(args.device, args.precision, parser, local=args.executor == "local")
    settings = planning.Settings(out=args.out, run_dir=args.run_dir, epochs=args.epochs, sets=tuple(args.set),
                                 extra=tuple(passed_on(args)), precision=precision, device=str(device), grids=grids,
                                 rerun=planning.rerun_key(device, args.executor == "local") if args.rerun else None)
    jobs = []
    for name in names:
        task_cls = TASKS[name]
        preset = args.preset or task_cls.default_preset
        try:
            check_preset(task_cls, preset)
        except ValueError as err:
            parser.error(str(err))
        overrides = parse_overrides(args.set, task_cls.presets[preset], f"{name}/{preset}", parser,
                                         declared_keys(task_cls))
        config = preset_config(task_cls, preset, args.epochs, overrides)
        try:
            task_cls.check_ranges(config)
        except ValueError as err:
            parser.error(set_flag_named(err, overrides))
        ensemble = config.get("ensemble") if args.seeds is None else None
        seeds = given_seeds or task_cls.default_seeds(config) or list(range(1, (ensemble or 1) + 1))
        jobs += planning.plan_task(task_cls, preset, variants, seeds, overrides, settings, fixed, ensemble, reselect)
    jobs = planning.link(jobs)
    unused = unused_grids(grids, jobs)
    if unused:
        parser.error(unused)
    local = args.executor == "local"
    try:
        check_jobs(jobs, settings, local)
    except ValueError as err:  # a table where the rows would land (damaged, another config, a folder), a folder
        parser.exit(2, f"{parser.prog}: error: {err}\n")  # about files, not flags: no usage block
    return jobs, settings, planning.device_name(args.device) if local else str(device)


CARRIED = ("seeds", "jobs", "threads", "device", "data_dir", "custom_data", "no_download", "out", "run_dir",
           "executor", "partition", "time_min", "gpus_per_job", "user_dir")  # what a follow-up grid must repeat


def carried_flags(parser, args):
    """' --seeds 1,2 --out my-results ...': the flags of this grid a follow-up command repeats (those not at their
    defaults)."""
    text = ""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest not in CARRIED or value == action.default or value is None:
            continue
        flag = action.option_strings[-1]
        values = value if isinstance(value, list) else [value]
        text += "".join(f" {flag}" if value is True else f" {flag} {shlex.quote(str(v))}" for v in values)
    return text


def executor_parameters(args):
    parameters = {"timeout_min": args.time_min, "cpus_per_task": args.threads, "gpus_per_node": args.gpus_per_job}
    return {**parameters, **({"slurm_partition": args.partition} if args.partition else {})}


def main(argv=None):
    """Plan, run and report the grid; a signal while it plans or writes its closing tables stops it there (exit
    130/143); while jobs run, the scheduler stops them at a checkpoint."""
    try:
        with command_signals():
            return run_grid(argv)
    except Stopped as stop:
        print(f"{stop}: finished jobs are in their tables; run the same command again to continue", file=sys.stderr)
        return stop.exit_code


def run_grid(argv=None):
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
    grid = Grid(jobs, settings, executor, slots, Display(), device)
    try:
        grid.run()
    except ValueError as err:  # a table damaged while the grid ran
        sys.exit(f"error: {err}")
    with deferred_signals():
        schemes_tables(jobs, args.out)
    print("\n".join(summary_lines(grid, settings)), flush=True)
    print("\n".join(verdicts(grid.jobs, args.out, carried_flags(parser, args))), flush=True)
    if grid.stopping:
        return 128 + grid.stop_signal
    return 1 if "failed" in grid.status or "stopped" in grid.status else 0


if __name__ == "__main__":
    sys.exit(main())
