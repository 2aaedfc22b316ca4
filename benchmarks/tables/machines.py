"""Which machine ran each seed of a table's row (core.provenance.machine_key), printed where a row's seeds ran on
more than one, and whether a selection may choose between points of two machines: a seed moves between machines
by about the seed-to-seed spread."""
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.tables.format import p_text
from benchmarks.tables.merge import load_runs
from core.provenance import machine_key, machine_name


def seeds_by_machine(runs):
    """{machine name: [seed, ...]} in the runs' order."""
    by_machine = defaultdict(list)
    for run in runs:
        by_machine[machine_name(run.get("provenance", {}))].append(str(run["seed"]))
    return by_machine


def seeds_text(group):
    """'1,2,3', or per machine where the seeds of a row ran on more than one: '1 (AMD EPYC, torch 2.9); 2,3
    (NVIDIA H200, torch 2.11)'."""
    by_machine = seeds_by_machine(group)
    if len(by_machine) == 1:
        return ",".join(next(iter(by_machine.values())))
    return "; ".join(f"{','.join(seeds)} ({machine})" for machine, seeds in by_machine.items())


def machine_count(runs):
    """How many machines (core.provenance.machine_key) the runs ran on."""
    return len({machine_key(r.get("provenance", {})) for r in runs})


def mixed_machines_lines(groups):
    """A warning under the summary for rows whose mean averages runs of different machines."""
    mixed = [f"{variant} p={p:g}: seeds {seeds_text(group)}" for (variant, p), group in groups.items()
             if machine_count(group) > 1]
    if not mixed:
        return []
    return ["**Rows that average runs of more than one machine** (device or torch version; one seed moves between "
            "machines by as much as the spread over seeds, or more, so compare these means with care): " + "; ".join(mixed) + ".", ""]


def seed_spread(task, table):
    """The task's seed-to-seed standard deviation of the validation main metric in the results table `table`
    (the mean over its variants with two or more seeds), or None where it has none."""
    key, by_variant = f"valid_{task.main_metric}", {}
    for run in load_runs(table) if Path(table).is_file() else []:
        if not run.get("ensemble") and key in run.get("metrics", {}):
            by_variant.setdefault((run["variant"], run["dropout"]), []).append(run["metrics"][key])
    spreads = [statistics.stdev(values) for values in by_variant.values() if len(values) > 1]
    return statistics.mean(spreads) if spreads else None


def _grid_point(run):
    """A run's point as benchmarks.select --grid takes it: '0.2', or '0.05/0.5' for zoneout's cells."""
    cell = run.get("config", {}).get("zoneout_cell") if run["variant"] == "zoneout" else None
    return f"{run['dropout']:g}" + (f"/{cell:g}" if cell is not None else "")


def check_one_machine(task, chosen, spread, preset):
    """A ValueError when a scheme's choice beats a point of another machine (GPU or CPU model, torch major.minor)
    by no more than one seed's spread: a seed moves that much between machines, so the points must be re-run on
    one machine. Names the points."""
    key, problems = f"valid_{task.main_metric}", []
    for variant, (best, grid) in chosen.items():
        mine = machine_key(best.get("provenance", {}))
        close = [r for r in grid if machine_key(r.get("provenance", {})) != mine
                 and (spread is None or abs(r["metrics"][key] - best["metrics"][key]) <= spread)]
        if close:
            others = ", ".join(f"p={p_text(r)} {r['metrics'][key]:.2f} on {machine_name(r['provenance'])}"
                               for r in close)
            limit = (f"one seed's spread ({spread:.2f}: the mean standard deviation over seeds of the task's "
                     "validation metric in its results table)" if spread is not None else "an unknown seed spread")
            points = ",".join(_grid_point(r) for r in [best, *close])
            problems.append(f"{variant}: p={p_text(best)} {best['metrics'][key]:.2f} on "
                            f"{machine_name(best['provenance'])} against {others}, within {limit}; re-run "
                            f"them on one machine: python -m benchmarks.select --task {task.name} --preset "
                            f"{preset} --variants {variant} --grid {points}")
    if problems:
        raise ValueError("a choice between grid points of different machines that one seed cannot tell apart: "
                         + "; ".join(problems))
