"""The one place that plans benchmark jobs: which runs a comparison needs, in which order, and how long they take
(the estimates: benchmarks/jobs/estimates.py).

A job is one ordinary `benchmarks.run` process (one task, preset, variant, seed) in its own run dir. A scheme
whose p the preset does not fix first gets one `--valid-only` selection job per grid point on the task's
selection seed; its seed jobs wait for that choice (benchmarks.select's rule) and use it. benchmarks.grid runs a
plan, benchmarks.paper is one, and benchmarks.run prints one before it trains more than one run.
"""
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from benchmarks.jobs.config import preset_config, preset_p, run_name
from benchmarks.jobs.estimates import estimate, estimate_sources, makespan, minutes
from benchmarks.tables.cross_task import how_tuned
from benchmarks.tables.format import counted, p_text
from benchmarks.tables.labels import P_BY_HAND, P_ON_VALIDATION, SELECTION_SUFFIX, table_label
from benchmarks.tables.merge import CONFIG_DEFAULTS, SEED_KEYS, load_runs, read_json
from core.provenance import (code_version, git_commit, hardware, machine_key, machine_name, recorded_user_code,
                             source_hash, user_code, user_code_hash)
from core.utils import pick_device
from tasks.base import TASKS, user_registered

DEFAULT_GRID = ((0.1, None), (0.2, None), (0.35, None), (0.5, None), (0.65, None))
ZONEOUT_GRID = ((0.05, 0.5), (0.1, 0.5), (0.2, 0.5))  # the zoneout paper's 0.05 with cells 0.5, and beyond


@dataclass(frozen=True)
class Job:
    task: str
    preset: str
    label: str  # the results table of the seed runs (selection runs go to <label>-p<P>-select)
    variant: str
    seed: int
    p: tuple = None  # (p, zoneout cell or None); None: waits for the choice on validation
    kind: str = "run"  # "run", "select" (a --valid-only grid point) or "ensemble"
    p_from: str = "preset"  # "none", "preset", P_BY_HAND or P_ON_VALIDATION
    ensemble: tuple = ()  # the seeds an ensemble job evaluates
    after: tuple = ()  # indices of the jobs this one waits for
    overrides: tuple = ()  # the --set items, parsed: ((key, value), ...)

    @property
    def choice(self):
        """The selection this job's p comes from (its key), or this selection job's own key."""
        return (self.task, self.label, self.variant)

    def rate(self):
        if self.p is None:
            return P_ON_VALIDATION
        p, cell = self.p
        return f"{p:g}" + (f"/{cell:g}" if cell is not None else "")

    def name(self):
        who = {"select": f"select p={self.rate()} seed {self.seed}",
               "ensemble": f"p={self.rate()} ensemble of seeds {','.join(map(str, self.ensemble))}"}
        return f"{self.task}/{self.label} {self.variant} " + who.get(self.kind, f"p={self.rate()} seed {self.seed}")



def _cell_override(job):
    return {"zoneout_cell": job.p[1]} if job.p and job.p[1] is not None else {}


def runner_label(job, settings):
    """The label benchmarks.run gives this job's table and run dirs (a selection job's: <label>-p<P>-select)."""
    if job.kind != "select":
        return job.label
    return table_label(TASKS[job.task], job.preset, settings.epochs, job.p[0],
                           {**dict(job.overrides), **_cell_override(job)}, settings.precision, valid_only=True,
                           device=settings.device)


def job_table(job, settings):
    folder = settings.selection_out if job.kind == "select" else settings.out
    return Path(folder) / job.task / f"{runner_label(job, settings)}.json"


def job_run_dir(job, settings):
    """The run dir of a job whose p is known (an ensemble job: its first seed's)."""
    return (Path(settings.run_dir) / job.task / runner_label(job, settings)
            / run_name(job.variant, job.p[0], job.seed))


@dataclass
class Settings:
    """What every job of a plan shares: runner flags and folders."""
    out: str = "results"
    run_dir: str = "runs"
    epochs: int = None
    sets: tuple = ()  # --set KEY=VALUE strings
    extra: tuple = ()  # more runner flags: --user-dir, --threads, --device, --data-dir, ...
    precision: str = "fp32"  # resolved (never "auto"): it names the tables
    device: str = "cpu"  # resolved (never "auto"): bf16 on a CPU names its tables too
    logs: str = None  # the jobs' output (default: <run_dir>/grid-logs)
    grids: dict = field(default_factory=dict)  # scheme (or None: every scheme) -> grid points
    rerun: tuple = None  # --rerun: (this commit, this machine's key or None) a row must come from to be kept

    @property
    def selection_out(self):
        return str(Path(self.run_dir) / "selection-tables")


def grid_points(settings, variant):
    if variant in settings.grids:
        return settings.grids[variant]
    if None in settings.grids:
        return settings.grids[None]
    return ZONEOUT_GRID if variant == "zoneout" else DEFAULT_GRID


def plan_task(task_cls, preset, variants, seeds, overrides, settings, fixed_p, ensemble=None, reselect=()):
    """The jobs of one task: selection jobs first, then a seed job per (variant, seed), then ensemble jobs.
    `reselect`: schemes whose p is chosen on validation even where the preset fixes it."""
    config = preset_config(task_cls, preset, settings.epochs, overrides)
    label = table_label(task_cls, preset, settings.epochs, None, overrides, settings.precision,
                            device=settings.device)
    job = lambda *a, **k: Job(task_cls.name, preset, label, *a, overrides=tuple(overrides.items()), **k)  # noqa: E731
    jobs = []
    for variant in variants:
        if variant == "none":
            p, source = (0.0, None), "none"
        elif variant in fixed_p:
            p, source = fixed_p[variant], P_BY_HAND
        else:
            p, source = preset_p(config, variant) if variant not in reselect else None, "preset"
        if p is None:
            source, seed = P_ON_VALIDATION, task_cls.selection_seed(config)
            jobs += [job(variant, seed, point, "select") for point in grid_points(settings, variant)]
        jobs += [job(variant, s, p, p_from=source) for s in seeds]
        if ensemble:
            jobs.append(job(variant, seeds[0], p, "ensemble", source, tuple(seeds)))
    return jobs


def link(jobs):
    """Number the jobs' dependencies: a seed job whose p is chosen waits for its selection jobs, an ensemble job
    for its seed jobs."""
    order = {"select": 0, "run": 1, "ensemble": 2}  # selection first: the long pole of a plan
    jobs = sorted(jobs, key=lambda j: order[j.kind])
    linked = []
    for job in jobs:
        if job.kind == "ensemble":
            after = [i for i, j in enumerate(jobs) if j.kind == "run" and j.choice == job.choice]
        elif job.kind == "run" and job.p is None:
            after = [i for i, j in enumerate(jobs) if j.kind == "select" and j.choice == job.choice]
        else:
            after = []
        linked.append(replace(job, after=tuple(after)))
    return linked


def job_argv(job, settings, source_table=None):
    """The benchmarks.run flags of one job (`--resume`: a rerun continues it, a finished run is reused)."""
    select = job.kind == "select"
    argv = ["--task", job.task, "--preset", job.preset, "--variants", job.variant, "--resume", "--no-progress",
            "--out", settings.selection_out if select else settings.out, "--run-dir", settings.run_dir]
    if settings.epochs is not None:
        argv += ["--epochs", str(settings.epochs)]
    argv += [a for item in settings.sets for a in ("--set", item)] + ["--precision", settings.precision]
    argv += list(settings.extra)
    if select:
        return argv + ["--seeds", str(job.seed), "--valid-only", "--dropout", f"{job.p[0]:g}"] + (
            ["--set", f"zoneout_cell={job.p[1]:g}"] if job.p[1] is not None else [])
    seeds = ",".join(map(str, job.ensemble or (job.seed,)))
    argv += ["--seeds", seeds] + (["--ensemble", str(len(job.ensemble))] if job.ensemble else [])
    if job.p_from in (P_BY_HAND, P_ON_VALIDATION):
        argv += ["--p", f"{job.variant}={job.rate()}"]
        if job.p_from == P_ON_VALIDATION:
            argv += ["--p-source", f"{P_ON_VALIDATION} ({source_table})"]
    return argv


def log_path(job, settings):
    """Where a job's output goes: <run-dir>/grid-logs/<task>_<label>_<variant>_..."""
    stem = job.name().replace("/", "_").replace(" ", "_").replace(",", "-").replace("=", "")
    return Path(settings.logs or Path(settings.run_dir) / "grid-logs") / f"{stem}.log"


def done_before(job, settings):
    """Whether the job's run is already in its table with the config this grid would train (a committed table's
    none and zaremba rows, say, or a job finished before a kill) and, for a scheme or task of the user's own, from
    the same user code: then there is nothing to do."""
    return _in_table(job, settings, _loaded_user_code()) == "done"


def rerun_key(device, local=True):
    """What --rerun keeps: rows of the code checked out (its commit, or the same source hash from another clean
    commit: a docs-only commit changes no code; uncommitted code never counts) and, when the jobs run on this
    machine, of this machine (its CPU model or GPU, and torch major.minor)."""
    here = machine_key({**hardware(device), "torch": torch.__version__}) if local else None
    return git_commit(), source_hash(), here


def made_by(prov, key):
    commit, digest, machine = key
    recorded = prov.get("git_commit") or ""
    same_code = recorded == commit or (prov.get("source_hash") == digest and not recorded.endswith("-dirty"))
    return same_code and not commit.endswith("-dirty") and (machine is None or machine_key(prov) == machine)


def rerun_reason(prov, key):
    """Why --rerun trains a row again, naming only what differs: 'its row: uncommitted code (commit
    016ea42c2137-dirty) on NVIDIA H200, torch 2.11'."""
    recorded = prov.get("git_commit") or ""
    same_code = made_by(prov, (key[0], key[1], None))
    code = "" if same_code else ("uncommitted code" if recorded.endswith("-dirty") else "other code")
    code = f"{code} ({code_version(prov)})" if code else ""
    machine = "" if key[2] is None or machine_key(prov) == key[2] else f"on {machine_name(prov)}"
    return "its row: " + " ".join(part for part in (code, machine) if part)


def other_p(job, settings):
    """'the table has weightdrop at p=0.2 (seed 1)': rows of the job's scheme and seed at another p, which a
    plan at this p neither trains nor removes; '' where there are none."""
    if job.kind != "run" or job.p is None:
        return ""
    others = sorted({p_text(r) for r in load_runs(job_table(job, settings)) if isinstance(r, dict)
                     and r.get("variant") == job.variant and r.get("seed") == job.seed and not r.get("ensemble")
                     and r.get("dropout") != job.p[0]})
    return f"new row; the table also has {job.variant} seed {job.seed} at p={', '.join(others)}" if others else ""


def _in_table(job, settings, loaded_user_code):
    """"done" when the job's run is in its table as done_before says, "older" when its row is there but from other
    --user-dir code than is loaded now (the user's own scheme or task: trained again, replacing it), "rerun" when
    --rerun asks for rows of this commit and machine and the row is not one, else None."""
    entry = table_entry(job, settings)
    if entry is None:
        return None
    if settings.rerun and not made_by(entry.get("provenance", {}), settings.rerun):
        return "rerun"
    older = _user_defined(job) and recorded_user_code(entry.get("provenance", {})) != loaded_user_code
    return "older" if older else "done"


def _user_defined(job):
    names = user_registered()
    return job.variant in names or job.task in names


def _loaded_user_code():
    files = user_code()
    return user_code_hash(files) if files else None


def table_entry(job, settings):
    """The job's run in its table with the config this grid would train, or None."""
    planned = {**preset_config(TASKS[job.task], job.preset, settings.epochs, dict(job.overrides)),
               "precision": settings.precision}
    planned.pop("scheme_dropout", None)
    for entry in load_runs(job_table(job, settings)):
        if not isinstance(entry, dict) or (entry.get("variant"), entry.get("dropout")) != (job.variant, job.p[0]):
            continue
        same_run = (tuple(entry.get("ensemble") or ()) == job.ensemble if job.kind == "ensemble" else
                    entry.get("seed") == job.seed and not entry.get("ensemble"))
        config = {**CONFIG_DEFAULTS, **entry.get("config", {})}
        if same_run and config.get("zoneout_cell") == job.p[1] and all(
                config.get(k) == v for k, v in planned.items() if k not in SEED_KEYS):
            return entry
    return None




def device_name(device):
    """What a table's runs call this device: 'cpu', or the GPU's name (benchmarks.tables.task_table.device_of)."""
    import torch

    device = pick_device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def recorded_choice(job, settings):
    """(p, cell) that the selection table in --out chose for the job's scheme, or None."""
    table = read_json(Path(settings.out) / job.task / f"{job.label}{SELECTION_SUFFIX}.json")
    decision = table.get("chosen", {}).get(job.variant) if isinstance(table, dict) else None
    return (decision["dropout"], decision.get("zoneout_cell")) if isinstance(decision, dict) else None


def _p_origin(job):
    """'preset', 'preset: chosen on validation' (its scheme_dropout entry) or P_BY_HAND."""
    run = {"variant": job.variant, "p_from": job.p_from, "preset": job.preset}
    chosen = job.p_from == "preset" and how_tuned(TASKS[job.task], run) == "on validation"
    return "preset: chosen on validation" if chosen else job.p_from


def describe(jobs, settings, device, slots, executor="local"):
    """(one paragraph: what will run and for how long, [one line per job with its estimate and dependencies]);
    jobs already in their tables count as 0."""
    out, loaded_user_code = settings.out, _loaded_user_code()
    in_table = [None if job.p is None else _in_table(job, settings, loaded_user_code) for job in jobs]
    checked = list(jobs)  # with the p of a choice already made
    for i, job in enumerate(jobs):  # a choice already made from a finished grid: its seed jobs count as the grid will
        grid = [k for k, other in enumerate(jobs) if other.kind == "select" and other.choice == job.choice]
        choice = recorded_choice(job, settings) if job.p is None else None
        if choice and grid and all(in_table[k] == "done" for k in grid):
            checked[i] = replace(job, p=choice)
            in_table[i] = _in_table(checked[i], settings, loaded_user_code)
    estimates = [(0.0, "finished before: in its table") if state == "done"
                 else estimate(out, job, device, settings.precision)
                 for job, state in zip(jobs, in_table)]
    seconds = [s for s, _ in estimates]
    unknown = sum(s is None for s in seconds)
    kinds = {k: sum(j.kind == k for j in jobs) for k in ("select", "run", "ensemble")}
    tables = sorted({f"{j.task}/{j.label}" for j in jobs})
    several = {t.split("/")[0] for t in tables if sum(u.startswith(t.split("/")[0] + "/") for u in tables) > 1}
    named = lambda j: f"{j.task}/{j.label}" if j.task in several else j.task  # noqa: E731
    sources = sorted({f"{named(j)} {j.variant}: {j.rate() if j.p_from != P_ON_VALIDATION else P_ON_VALIDATION}"
                      + (f" ({_p_origin(j)})" if j.p_from in ("preset", P_BY_HAND) else "")
                      for j in jobs if j.kind == "run"})
    total = makespan(jobs, seconds, slots)
    what = counted(kinds["run"], "run")
    if kinds["select"]:
        what = f"{kinds['select']} selection runs (--valid-only, one seed), then " + what
    if kinds["ensemble"]:
        what += f" and {kinds['ensemble']} ensemble evaluations"
    at_once = f"{counted(slots, 'job')} at a time ({executor})"
    if unknown and all(s is None or s == 0.0 for s in seconds):  # nothing to run has a recorded time
        when = f"No time estimate: {out}/ records no run of these tables on {device}; {at_once}."
    else:
        when = (f"Estimated {minutes(total)} with {at_once}, from {estimate_sources(estimates, out, device)} (each "
                "job's source with --dry-run)"
                + (f"; no recorded time for #{', #'.join(str(i + 1) for i, t in enumerate(seconds) if t is None)} "
                   "(counted as 0: the estimate is a lower bound)" if unknown else "") + ".")
    done = sum(how.startswith("finished before") for _, how in estimates)
    if done == 1:
        when = f"1 of the {len(jobs)} jobs is in its table already (skipped). " + when
    elif done:
        when = f"{done} of the {len(jobs)} jobs are in their tables already (skipped). " + when
    older = [job for job, state in zip(jobs, in_table) if state == "older"]
    if older:
        when += (f" {counted(len(older), 'row')} of your own code "
                 f"({', '.join(sorted({j.variant for j in older}))}) came from older --user-dir code: trained again, "
                 "replacing them.")
    again = [job for job, state in zip(jobs, in_table) if state == "rerun"]
    if settings.rerun and not again and done:
        when += (f" --rerun: the rows in the tables came from this code (commit {settings.rerun[0][:12]}'s source) here: "
                 "none to train again.")
    if again:
        commit, _, machine = settings.rerun
        made = f"the code of commit {commit[:12]}" + (f" on {machine[0]}, torch {machine[1]}" if machine else "")
        when += (f" --rerun: {counted(len(again), 'row')} in the tables did not come from {made}: "
                 "trained again, each replacing its row as it lands (the old row stays in the table's git history).")
    paragraph = f"Plan: {what} into {', '.join(tables)}; p: {'; '.join(sources)}. {when}"
    lines = []
    for i, (job, (s, how)) in enumerate(zip(jobs, estimates)):
        after = f"after #{','.join(str(a + 1) for a in job.after)}" if job.after else "no wait"
        why = (f"; --rerun, {rerun_reason(table_entry(checked[i], settings)['provenance'], settings.rerun)}"
               if in_table[i] == "rerun" else "")
        beside = other_p(checked[i], settings) if in_table[i] is None else ""
        why = f"; {beside}" if beside else why
        lines.append(f"#{i + 1} {job.name()}: {after}; {minutes(s)} ({how}){why}")
    return paragraph, lines


def print_plan(jobs, settings, device, slots, executor="local", every_job=False, file=None):
    paragraph, lines = describe(jobs, settings, device, slots, executor)
    print(paragraph, file=file or sys.stdout, flush=True)
    if every_job:
        print("\n".join(lines), file=file or sys.stdout, flush=True)
