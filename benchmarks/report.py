"""Re-render results tables from their recorded runs, or merge runs trained apart into one table.

    python -m benchmarks.report results/lm/cpu.json                      # the .md and .png again, from the .json
    python -m benchmarks.report results/lm/speed.json results/lm/mc.json # speed and MC tables too
    python -m benchmarks.report a/lm/cpu.json b/lm/cpu.json --into results/lm/cpu.json
"""
import argparse
import sys
from pathlib import Path

from benchmarks.jobs.flags import add_user_dir_flag, load_task_registry
from benchmarks.tables.labels import OTHER_TABLES, preset_of
from benchmarks.tables.mc_table import mc_markdown, plot as mc_plot
from benchmarks.tables.merge import check_consistent, load_runs, read_json
from benchmarks.tables.speed_table import speed_markdown
from benchmarks.tables.overview import write_overview
from benchmarks.tables.task_table import task_markdown, plot, write_results
from benchmarks.tables.uncommitted import reasons_for
from core.interrupt import Stopped, command_signals, deferred_signals, pause_point
from core.utils import write_text
from tasks.base import TASKS, get_task




def task_folder(path):
    """results/<task> of a table, also for one in a folder of its own (results/speech/cpu-design/<label>.json)."""
    return next((p for p in path.parents if p.name in TASKS), path.parent)


def render_other(path, parser):
    """Re-render a speed or MC table from its JSON."""
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        parser.error(f"{path} holds no entries")
    task = get_task(task_folder(path).name)
    if path.stem == "speed":
        write_text(path.with_suffix(".md"), speed_markdown(task, entries, reasons_for(path)))
    else:
        write_text(path.with_suffix(".md"), mc_markdown(task, entries))
        mc_plot(task, entries, path.with_suffix(".png"))
    print(f"rendered {path.with_suffix('.md')}")


def main(argv=None):
    """Render (or merge) every table given; SIGINT/SIGTERM stop between tables, never inside one (exit 130/143)."""
    try:
        with command_signals():
            return render(argv)
    except Stopped as stop:
        print(f"{stop}: the tables rendered before it are whole, the others untouched; run the command again",
              file=sys.stderr)
        sys.exit(stop.exit_code)


def render(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="results/<task>/<label>.json files written by benchmarks.run")
    parser.add_argument("--into", metavar="RESULTS_JSON",
                        help="merge the runs of all the given files (e.g. variants trained in parallel with their own "
                             "--out) into this results/<task>/<label>.json, checked like the runner's merges, and render it")
    add_user_dir_flag(parser)
    args = parser.parse_args(argv)
    load_task_registry(args, parser)
    try:
        for path in args.json + ([args.into] if args.into else []):
            if Path(path).stem not in OTHER_TABLES:
                load_runs(path)  # every table checked before anything is written
    except ValueError as err:
        parser.error(str(err))
    if args.into:
        into = Path(args.into)
        pairs = [(run, str(path)) for path in args.json for run in load_runs(path)]
        if not pairs:
            parser.error(f"no runs in {', '.join(args.json)}")
        runs, sources = [r for r, _ in pairs], [s for _, s in pairs]
        try:
            with deferred_signals():
                log = write_results(into.parent.parent, get_task(into.parent.name), into.stem,
                                    runs[0].get("preset", preset_of(into.stem)), runs, sources, refuse=False)
                write_overview_for(into.parent.parent, into.stem)
        except ValueError as err:
            parser.error(str(err))
        for line in log["added"]:
            print(f"added to {into}: {line}")
        for line in log["refused"]:
            print(f"refused: {line}", file=sys.stderr)
        print(f"{into}: {len(log['added'])} added, {len(log['replaced'])} replaced, {len(log['refused'])} refused "
              f"(of {len(runs)} runs given)")
        if log["refused"]:
            sys.exit(1)
        return
    for path in map(Path, args.json):
        if path.stem in OTHER_TABLES:
            with deferred_signals():
                render_other(path, parser)
            continue
        runs = load_runs(path)
        if not runs:
            parser.error(f"{path} has no runs")
        folder = task_folder(path)
        task, label = get_task(folder.name), path.stem
        try:
            check_consistent(runs, path)
        except ValueError as err:
            parser.error(str(err))
        preset = runs[0].get("preset", preset_of(label))
        reasons = reasons_for(path)
        with deferred_signals():  # the md, the png, the figures and the overview: all of them, then a signal acts
            pause_point("report_write")
            write_text(path.with_suffix(".md"), task_markdown(task, label, preset, runs, reasons))
            plot(task, label, runs, path.with_suffix(".png"))
            task.figures(runs, path.parent, label)
            print(f"rendered {path.with_suffix('.md')} and {path.with_suffix('.png')}")
            write_overview_for(folder.parent, label)


def write_overview_for(out_dir, label):
    """The overview and schemes table, and the label's own schemes-<label> table where one was made before."""
    write_overview(out_dir, label if (Path(out_dir) / f"schemes-{label}.md").exists() else None)


if __name__ == "__main__":
    main()
