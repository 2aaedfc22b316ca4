"""Which machine ran each seed of a table's row (core.provenance.machine_key): printed where a row's seeds ran on
more than one, since a seed moves between machines by about the seed-to-seed spread."""
from collections import defaultdict

from core.provenance import machine_key, machine_name


def seeds_text(group):
    """'1,2,3', or per machine where the seeds of a row ran on more than one: '1 (AMD EPYC, torch 2.9); 2,3
    (NVIDIA H200, torch 2.11)'."""
    by_machine = defaultdict(list)
    for run in group:
        by_machine[machine_name(run.get("provenance", {}))].append(str(run["seed"]))
    if len(by_machine) == 1:
        return ",".join(next(iter(by_machine.values())))
    return "; ".join(f"{','.join(seeds)} ({machine})" for machine, seeds in by_machine.items())


def mixed_machines_lines(groups):
    """A warning under the summary for rows whose mean averages runs of different machines."""
    mixed = [f"{variant} p={p:g}: seeds {seeds_text(group)}" for (variant, p), group in groups.items()
             if len({machine_key(r.get("provenance", {})) for r in group}) > 1]
    if not mixed:
        return []
    return ["**Rows that average runs of more than one machine** (device or torch version; a seed moves between "
            "machines by about the seed spread, so compare these means with care): " + "; ".join(mixed) + ".", ""]
