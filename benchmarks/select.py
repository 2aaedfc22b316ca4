"""Each scheme's p, chosen on validation only: run a small grid of `--valid-only` runs on one seed (or collect
runs made before) and write results/<task>/<preset>-selection.{json,md}.

    python -m benchmarks.select --task lm --variants variational,weightdrop --grid 0.1,0.2,0.35
    python -m benchmarks.select --task speech --variants zoneout --grid 0.1,0.05/0.5 --jobs 2
    python -m benchmarks.select --task lm --collect runs/selection logs/grid   # tabulate runs made before
    python -m benchmarks.select --task lm --variants zoneout --grid 0.05/0.5 --final -- --threads 1 --device cuda

A grid point is a p, or "P/PC" for zoneout (hiddens P, cells PC). Every point trains on one seed with
`--valid-only`, so the test split is never read; per scheme the point with the best validation main metric at
its best epoch is chosen (ties: the lower p). Runs that read the test split are refused, and runs of another
config than the preset's (another --set, epochs, precision) are left out, with a line saying so. The table
ends with the preset's `scheme_dropout` entry to copy. Flags after `--` go to every grid run's runner (checked
by the runner's own parser before any run starts); grid runs always `--resume`, so a stopped grid continues.
The points already in results/<task>/<preset>-selection.json are kept (a new run of a point replaces its entry),
so a grid can grow over several sessions or machines; `--fresh` starts the table over.
"""
import argparse
import sys
from pathlib import Path

from benchmarks.jobs.flags import add_user_dir_flag, load_task_registry
from benchmarks.jobs.config import parse_point
from benchmarks.tables.labels import SELECTION_SUFFIX
from benchmarks.jobs.selection import (Runs, choose, collect, decided_run, final_commands, grid_commands,
                                       shortened, write_selection)
from core.interrupt import Stopped, command_signals, deferred_signals
from tasks.base import get_task


def main(argv=None):
    """Run the grid, choose, write the selection table; a signal stops it between writes (exit 130/143)."""
    try:
        with command_signals():
            return run_selection(argv)
    except Stopped as stop:
        print(f"{stop}: the selection table is whole (as before, or with this choice); the grid runs resume "
              "when the command is run again", file=sys.stderr)
        sys.exit(stop.exit_code)


def run_selection(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    add_user_dir_flag(parser)
    parser.add_argument("--preset", help="default: the task's default preset")
    parser.add_argument("--variants", help="comma list of schemes to run the grid for")
    parser.add_argument("--grid", help="comma list of grid points: p, or P/PC for zoneout")
    parser.add_argument("--seed", type=int, help="the seed of every grid run (default: the task's selection seed, "
                                                  "1; the speech cpu preset's is 0, its dev fold)")
    parser.add_argument("--jobs", type=int, default=1, help="grid points trained at once (default 1)")
    parser.add_argument("--work", default="runs/selection", help="--out and --run-dir of the grid runs")
    parser.add_argument("--collect", nargs="*", default=[], metavar="FOLDER",
                        help="also tabulate selection runs already under these folders")
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the grid points of the existing selection table (default: keep them, so a "
                             "grid grows over several sessions or machines)")
    parser.add_argument("--final", action="store_true",
                        help="then evaluate test once for each scheme's chosen point (only --variants', if given), "
                             "from its grid run's own training (results in <work>/final/; merge them with "
                             "benchmarks.report --into)")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, run_args = parser.parse_args(argv[:cut]), argv[cut + 1:]
    load_task_registry(args, parser)
    run_args = [a for d in args.user_dir or [] for a in ("--user-dir", d)] + run_args  # the grid runs need them too
    try:
        task = get_task(args.task)
        preset = args.preset or task.default_preset
        commands = []
        if args.variants and not (args.grid or args.final):
            parser.error("--variants needs --grid (the points to train) or --final (the schemes to test)")
        if args.grid:
            if not args.variants:
                parser.error("--grid needs --variants (the schemes to train it for)")
            try:
                points = [parse_point(t) for t in args.grid.split(",") if t.strip()]
            except ValueError as err:
                parser.error(f"--grid {args.grid}: {err}")
            if args.seed is None:
                args.seed = task.selection_seed(task.presets[preset])
            work = Path(args.work)
            commands = grid_commands(task.name, preset, args.variants.split(","), points, args.seed,
                                     work / "out", work / "runs", run_args)
    except ValueError as err:
        parser.error(str(err))
    failed = [c for c, rc in zip(commands, Runs().map(commands, args.jobs)) if rc]
    if failed:
        sys.exit("error: grid runs failed (their output is above): " + "; ".join(" ".join(c[2:]) for c in failed))
    reference, label, precision = shortened(task, preset, run_args)
    target = Path(args.out) / task.name / f"{label}{SELECTION_SUFFIX}"
    earlier = None if args.fresh else target.with_suffix(".json")
    try:
        folders = ([Path(args.work)] if commands else []) + [Path(f) for f in args.collect]
        runs, notes = collect(task, preset, folders,
                              earlier, reference, args.seed, precision)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if not runs:
        sys.exit(f"error: no --valid-only runs of {task.name}/{preset} found; run a grid (--variants, --grid)")
    chosen = choose(task, runs)
    try:
        with deferred_signals():  # its json and md together
            decisions = write_selection(target, task, preset, chosen, notes, reference)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {target}.{{json,md}}: " + "; ".join(
        f"{v} p={d['dropout']:g}" + (f" (cells {d['zoneout_cell']:g})" if d.get("zoneout_cell") is not None else "")
        + (" (no signal: every point ties)" if d["no_signal"] else " chosen") for v, d in decisions.items()))
    if args.final:
        try:
            wanted = args.variants.split(",") if args.variants else chosen
            missing = sorted(set(wanted) - set(chosen))
            if missing:
                raise ValueError(f"--final: no grid runs of {', '.join(missing)} found "
                                 f"(schemes with grid runs: {', '.join(chosen)})")
            finals = final_commands(task, {v: (decided_run(v, decisions[v], grid), grid)
                                           for v, (_, grid) in chosen.items() if v in wanted}, args.work, run_args)
        except ValueError as err:
            sys.exit(f"error: {err}")
        if any(Runs().map(finals)):
            sys.exit("error: evaluating a chosen point failed (its output is above)")
        print(f"test results of the chosen points: {Path(args.work) / 'final' / task.name}/ (merge: python -m "
              f"benchmarks.report --into results/{task.name}/{preset}.json <that json>)")


if __name__ == "__main__":
    main()
