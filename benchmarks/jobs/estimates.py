"""How long planned jobs take: the whole-job wall times recorded in the tables (in --out, else in the repository's
results/), else a training time from the task's speed table on this kind of machine; and the plan's wall time with
N jobs at a time. benchmarks.jobs.plan prints them; the scheduler counts down with them."""
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.jobs.config import preset_config
from benchmarks.tables.labels import SELECTION_SUFFIX, fp32_label
from benchmarks.tables.merge import read_json, singles
from benchmarks.tables.task_table import device_of
from core.provenance import ROOT, hardware, machine_key
from tasks.base import TASKS


def whole_job_s(run):
    """A recorded run's whole time (start-up, setup, training, final evaluation: its `timings`), or for a run from
    before they were recorded its training time alone; (seconds, whether whole)."""
    timings = run.get("timings")
    if isinstance(timings, dict) and timings:
        return sum(timings.values()), True
    return run.get("wall_s"), False


def recorded_walls(out, job, device):
    """{variant: [(seconds, whole)]} of the runs recorded for this job's table (selection jobs: its selection
    table, else the table itself) on `device`, read from `out` and, where that has none, from the repository's
    results/."""
    names = [f"{job.label}{SELECTION_SUFFIX}.json", f"{job.label}.json"] if job.kind == "select" else [f"{job.label}.json"]
    for folder in dict.fromkeys([Path(out), ROOT / "results"]):
        for name in names:
            found = read_json(folder / job.task / name)
            runs = found.get("runs", []) if isinstance(found, dict) else found
            walls = {}
            for r in singles(runs) if isinstance(runs, list) else []:
                if isinstance(r, dict) and r.get("wall_s") and device_of(r) == device:
                    walls.setdefault(r["variant"], []).append(whole_job_s(r))
            if walls:
                return walls
    return {}


def recorded_mean(walls, variant):
    """(mean seconds, count, ' of other schemes' or '', whether every one is a whole job) of the recorded runs of
    `variant`, else of every scheme in `walls`; or None."""
    found = walls.get(variant) or [w for ws in walls.values() for w in ws]
    if not found:
        return None
    others = "" if variant in walls else " of other schemes"
    return statistics.mean(s for s, _ in found), len(found), others, all(w for _, w in found)


def speed_estimate(out, job, device, precision):
    """(seconds, how) of a job with no recorded run of its own table, from this machine kind's speed table: the
    rate x an epoch's items x epochs where the task knows its items without the data, else (bf16, tf32) the fp32
    table's recorded runs scaled by the fp32/precision rate ratio; or None."""
    row = job.variant + ("-bf16" if precision == "bf16" else "")
    section = speed_section(out, job, device, row)
    if section is None:
        return None
    rate, threads = section["results"][row]["train_tok_s"], section["provenance"].get("torch_threads", "?")
    threads = f"{threads} thread" + ("" if threads == 1 else "s")
    config = preset_config(TASKS[job.task], job.preset, None, dict(job.overrides))
    items = TASKS[job.task].train_items(config)
    if items:
        return config["epochs"] * items / rate, (f"training only, from the speed table's {row} rate ({rate:,.0f} "
                                                 f"items/s at {threads}) x {items:,} items x "
                                                 f"{config['epochs']} epochs")
    base_label, base_rate = fp32_label(job.label), section["results"].get(job.variant, {}).get("train_tok_s")
    if base_label is None or not base_rate:
        return None
    recorded = recorded_mean(recorded_walls(out, replace(job, label=base_label), device), job.variant)
    if recorded is None:
        return None
    mean, count, others, whole = recorded
    return mean * base_rate / rate, (
        f"{count} recorded runs{others} of {job.task}/{base_label} x {base_rate:,.0f} / {rate:,.0f}, the speed "
        f"table's {job.variant} / {row} rates at {threads}" + ("" if whole else "; training time only"))


def speed_section(out, job, device, row):
    """The newest speed-table section of this job's preset on this kind of machine that times `row`, or None."""
    try:
        machine = hardware(device if device == "cpu" else "cuda")
    except (RuntimeError, AssertionError):  # a cluster's GPU jobs planned where there is no GPU: nothing to match
        return None
    here = machine_key({**machine, "torch": torch.__version__}), machine["cpu_capability"]
    for folder in dict.fromkeys([Path(out), ROOT / "results"]):
        for entry in reversed(read_json(folder / job.task / "speed.json")):  # the newest section first
            prov = entry.get("provenance", {}) if isinstance(entry, dict) else {}
            rate = entry.get("results", {}).get(row, {}).get("train_tok_s") if prov else None
            if rate and entry.get("preset") == job.preset and (machine_key(prov), prov.get("cpu_capability")) == here:
                return entry
    return None


def estimate(out, job, device, precision="fp32"):
    """(seconds, how) for one job, or (None, 'unknown'); ensembles evaluate and are counted as 0."""
    if job.kind == "ensemble":
        return 0.0, "evaluation only"
    recorded = recorded_mean(recorded_walls(out, job, device), job.variant)
    if recorded is None:
        return speed_estimate(out, job, device, precision) or (None, "no recorded run on this device")
    mean, count, others, whole = recorded
    return mean, f"{count} recorded{others}" + ("" if whole else ", training time only")


def makespan(jobs, seconds, slots):
    """The wall time of the plan with `slots` jobs at a time, each job as soon as a slot is free and its
    dependencies have ended (unknown estimates count as 0)."""
    end, free = {}, [0.0] * slots
    for i, job in enumerate(jobs):  # plan order is a topological order
        ready = max([end[j] for j in job.after], default=0.0)
        k = min(range(slots), key=lambda s: max(free[s], ready))
        start = max(free[k], ready)
        end[i] = free[k] = start + (seconds[i] or 0.0)
    return max(end.values(), default=0.0)


def minutes(seconds):
    return "unknown" if seconds is None else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def estimate_sources(estimates, out, device):
    """What the estimates came from: 'the wall times recorded on cpu in results/ and the task's speed table'."""
    hows = [how for _, how in estimates]
    where = f"{out}/" + ("" if Path(out).resolve() == ROOT / "results" else " (else the repository's results/)")
    sources = ([f"the wall times recorded on {device} in {where}"] if any(h[:1].isdigit() and " recorded" in h for h in hows) else []) \
        + (["the task's speed table on this kind of machine"] if any("speed table" in h for h in hows) else [])
    return " and ".join(sources) or "the tables' records"
