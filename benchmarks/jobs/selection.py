"""The selection rule: each scheme's p chosen on validation only, from `--valid-only` runs of one seed per grid
point (the commands that train them, collecting them, the choice, and the selection table
results/<task>/<label>-selection.{json,md}). benchmarks.select and benchmarks.grid apply it."""
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.jobs.config import declared_keys, parse_overrides, preset_config, run_name
from benchmarks.jobs.flags import resolve_device, resolve_precision_flag
from benchmarks.jobs.runner import build_parser, runner_command
from benchmarks.tables.labels import SELECT_SUFFIX, SELECTION_SUFFIX, table_label
from benchmarks.tables.format import LOWER_IS_BETTER, p_text
from benchmarks.tables.merge import SEED_KEYS, load_runs, read_json
from benchmarks.tables.machines import check_one_machine, seed_spread
from benchmarks.tables.uncommitted import is_dirty, reasons_for, uncommitted_lines
from core.provenance import code_version, machine_key, machine_name
from core.interrupt import ENV_STOP_WITH_PARENT, Stopped
from core.locks import table_lock
from core.utils import write_json, write_text

IGNORED = set(SEED_KEYS) | {"precision", "scheme_dropout"}  # may differ between the points of one grid
OWN_FLAGS = {"--task", "--preset", "--variants", "--dropout", "--seeds", "--ensemble", "--valid-only", "--out",
             "--run-dir", "--list"}  # set by the grid itself: not to be passed after --


def start_run(command):
    """Start one benchmarks.run command in its own session, so a Ctrl-C at the terminal reaches this command
    alone, which passes it on once (`Runs.stop`; a second signal would stop the run without its checkpoint);
    it also stops, saving its checkpoint, if this command is killed."""
    return subprocess.Popen(command, start_new_session=True, env={**os.environ, ENV_STOP_WITH_PARENT: str(os.getpid())})


class Runs:
    """benchmarks.run commands, `jobs` at a time. A signal to this command (Stopped, raised while it waits)
    stops the running ones at their checkpoints before it goes on, instead of waiting for them to finish."""

    def __init__(self):
        self.running, self.lock, self.stopping = set(), threading.Lock(), False

    def call(self, command):
        with self.lock:
            if self.stopping:
                return 128 + signal.SIGTERM
            process = start_run(command)
            self.running.add(process)
        try:
            return process.wait()
        finally:
            with self.lock:
                self.running.discard(process)

    def map(self, commands, jobs=1):
        """Their exit statuses, in order."""
        pool = ThreadPoolExecutor(max(1, jobs))
        try:
            return list(pool.map(self.call, commands))
        except Stopped as stop:
            self.stop(stop.signum)
            raise
        except BaseException:
            self.stop(signal.SIGTERM)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def stop(self, signum):
        """Pass the signal this command got to each running run (it saves a checkpoint at its next training step;
        one still starting stops at once) and wait for them."""
        with self.lock:
            self.stopping, running = True, list(self.running)
        if running:
            print(f"passing {signal.Signals(signum).name} to the {len(running)} running grid run(s): each stops, "
                  "saving a checkpoint if it has begun training", file=sys.stderr, flush=True)
        for process in running:
            process.send_signal(signum)
        for process in running:
            process.wait()


def run_command(task, preset, variant, p, cell, seed, out, run_dir, run_args=(), valid_only=True):
    """The `benchmarks.run --resume` command of one (scheme, point, seed); `--valid-only` for a grid run."""
    argv = ["--task", task, "--preset", preset, "--variants", variant, "--dropout", f"{p:g}", "--seeds", str(seed)]
    if valid_only:
        argv.append("--valid-only")
    argv += ["--no-progress", "--resume", "--out", str(out), "--run-dir", str(run_dir), *run_args]
    if cell is not None:
        argv += ["--set", f"zoneout_cell={cell:g}"]
    return runner_command(argv)


def shortened(task, preset, run_args):
    """(the config every grid run shares, the selection table's label, the precision) for runner flags such as
    --epochs 2, --set hidden=64 or --precision bf16 after --: such a grid is its own selection table,
    <preset>-e2-selection, <preset>-bf16-cpu-selection."""
    parser = build_parser()
    ns, _ = parser.parse_known_args(["--task", task.name, *run_args])
    overrides = parse_overrides(ns.set, task.presets[preset], preset, parser, declared_keys(task))
    device = resolve_device(ns.device, parser)
    precision = resolve_precision_flag(ns.precision, device, parser)
    label = table_label(task, preset, ns.epochs, None, overrides, precision, device=device)
    return preset_config(task, preset, ns.epochs, overrides), label, precision


def grid_commands(task, preset, variants, points, seed, out, run_dir, run_args=()):
    """One `benchmarks.run --valid-only --resume` command per (scheme, grid point), plus `run_args` (more
    runner flags); each command is checked by the runner's parser (argparse's exit on a bad flag)."""
    clash = sorted({a.split("=", 1)[0] for a in run_args} & OWN_FLAGS)
    if clash:
        raise ValueError(f"{', '.join(clash)} after -- : the grid sets these itself (use select's own flags)")
    commands, runner = [], build_parser()
    for variant in variants:
        for p, cell in points:
            if cell is not None and variant != "zoneout":
                raise ValueError(f"grid point {p:g}/{cell:g}: a cell rate is zoneout's alone, not {variant}'s")
            commands.append(run_command(task, preset, variant, p, cell, seed, out, run_dir, run_args))
            runner.parse_args(commands[-1][3:])
    return commands


def collect(task, preset, folders, earlier=None, reference=None, seed=None, precision="fp32"):
    """The selection runs of `preset` under `folders` (any depth; the runner names their tables
    <label>-select.json) and in `earlier`, a selection table written before (read first, so that a new run of
    the same point replaces its entry); (runs, notes on what was left out). `reference`: the config the runs
    must share (default: the preset's; a shortened grid passes its --epochs / --set config); `seed`: the only
    seed taken (default: the task's selection seed), as another seed validates on another fold; `precision`: the
    only precision taken (a bf16 grid is not chosen from fp32 runs, nor the other way)."""
    reference = {k: v for k, v in (reference or task.presets[preset]).items() if k not in IGNORED}
    seed = task.selection_seed(task.presets[preset]) if seed is None else seed
    runs, notes = [], []
    tables = sorted({p for folder in folders for p in Path(folder).rglob(f"{task.name}/*-select.json")})
    for path in ([earlier] if earlier else []) + tables:
        found = read_json(path) if path == earlier else load_runs(path)
        for run in found.get("runs", []) if isinstance(found, dict) else found:
            if not isinstance(run, dict) or run.get("preset") != preset or run.get("seed") is None:
                continue
            if run["variant"] == "none":  # p = 0 by definition: nothing to choose
                continue
            if run["seed"] != seed:
                notes.append(f"refused {path}: {run['variant']} p={p_text(run)} has seed {run['seed']}, not the "
                             f"selection seed {seed} (another seed validates on other data)")
                continue
            if run["config"].get("precision", "fp32") != precision:
                notes.append(f"left out {path}: {run['variant']} p={p_text(run)} ran in "
                             f"{run['config'].get('precision', 'fp32')}, not {precision}")
                continue
            if any(k.startswith("test_") for k in run["metrics"]):
                raise ValueError(f"{path} holds a run that read the test split ({run['variant']} p={p_text(run)}): "
                                 "selection uses --valid-only runs only")
            differs = sorted(k for k in set(reference) | set(run["config"])
                             if k not in IGNORED and run["config"].get(k, reference.get(k)) != reference.get(k))
            if differs:
                notes.append(f"left out {path}: {run['variant']} p={p_text(run)} differs from preset {preset} in "
                             f"{', '.join(differs)}")
                continue
            runs.append({**run, "table": str(path)})
    return runs, notes


def choose(task, runs):
    """{variant: (chosen run, [grid runs by p])}: the best validation main metric, ties to the lower p."""
    key, sign = f"valid_{task.main_metric}", 1 if task.main_metric in LOWER_IS_BETTER else -1
    by_variant = {}
    for run in runs:
        by_variant.setdefault(run["variant"], {})[(run["dropout"], run["config"].get("zoneout_cell"))] = run
    return {variant: (min(points.values(), key=lambda r: (sign * r["metrics"][key], r["dropout"])),
                      [points[k] for k in sorted(points, key=lambda k: (k[0], k[1] or 0))])
            for variant, points in sorted(by_variant.items())}


def no_signal(task, grid):
    """Whether every point of a grid (>= 2 points) gives the same validation metric, as printed (2 decimals):
    then the grid says nothing about p and its 'best' point is no choice."""
    values = {round(r["metrics"][f"valid_{task.main_metric}"], 2) for r in grid}
    return len(grid) > 1 and len(values) == 1


def fallback_p(task, preset_config, grid):
    """The p a grid without signal falls back to: the preset's own dropout p if it has one, else the grid's
    lowest point (the tie rule)."""
    lowest = min(grid, key=lambda r: (r["dropout"], r["config"].get("zoneout_cell") or 0))
    return (preset_config["dropout"], None) if preset_config.get("dropout") else (
        lowest["dropout"], lowest["config"].get("zoneout_cell"))


def at_edge(best, grid):
    """Whether the chosen p is its grid's lowest or highest (of >= 2 distinct p): a point beyond may do better."""
    ps = {r["dropout"] for r in grid}
    return len(ps) > 1 and best["dropout"] in (min(ps), max(ps))


def decided_run(variant, decision, grid):
    """The grid run at the decided point (a grid without signal decides its fallback p, which may be no point)."""
    for r in grid:
        if (r["dropout"], r["config"].get("zoneout_cell")) == (decision["dropout"], decision["zoneout_cell"]):
            return r
    raise ValueError(f"--final: {variant}'s grid has no signal and its fallback p={decision['dropout']:g} is not a "
                     "grid point: train that p with benchmarks.run, or add points that tell the p apart")


def final_commands(task, chosen, work, run_args=()):
    """Test once, for each scheme's chosen point, from its own training: the grid run's folder is copied to
    where the same command without --valid-only keeps its runs, and that command resumes it (nothing is
    trained again; the test split is read once). Only for grid runs under `work` (their checkpoints)."""
    commands = []
    for variant, (best, _) in chosen.items():
        table = Path(best["table"])
        name = run_name(variant, best["dropout"], best["seed"])
        source = Path(work) / "runs" / task.name / table.stem / name
        if not (source / "best.pt").exists():
            raise ValueError(f"--final: {variant} p={p_text(best)} has no checkpoint under {source} (it was "
                             f"collected, not run by this --work): train it with benchmarks.run instead")
        target = source.parent.with_name(table.stem.removesuffix(SELECT_SUFFIX)) / name
        if not target.exists():
            shutil.copytree(source, target)
        commands.append(run_command(task.name, best["preset"], variant, best["dropout"],
                                    best["config"].get("zoneout_cell"), best["seed"], Path(work) / "final",
                                    Path(work) / "runs", run_args, valid_only=False))
    return commands


def decide(task, preset_config, chosen):
    """{variant: the decision written to the selection table}: the chosen point, or, for a grid without signal,
    the fallback p with `no_signal` set."""
    decisions = {}
    for variant, (best, grid) in chosen.items():
        if no_signal(task, grid):
            p, cell = fallback_p(task, preset_config, grid)
            decisions[variant] = {"dropout": p, "zoneout_cell": cell, "at_edge": False, "no_signal": True,
                                  "fallback": "the preset's p" if preset_config.get("dropout") else "the lowest point"}
        else:
            decisions[variant] = {"dropout": best["dropout"], "zoneout_cell": best["config"].get("zoneout_cell"),
                                  "at_edge": at_edge(best, grid), "no_signal": False}
    return decisions


def _decision_text(task, decision, grid):
    rate = f"{decision['dropout']:g}" + (f", cells {decision['zoneout_cell']:g}"
                                         if decision["zoneout_cell"] is not None else "")
    if decision["no_signal"]:
        value = grid[0]["metrics"][f"valid_{task.main_metric}"]
        return f"**no signal** (every point {value:.2f}): no choice; falls back to {rate} ({decision['fallback']})"
    return rate + " (edge)" if decision["at_edge"] else rate


def write_selection(target, task, preset, chosen, notes, preset_config):
    """Write <target>.{json,md} (under the table lock: several schemes' choices may land at once); returns the
    decisions (see `decide`). Refuses (ValueError) a choice check_one_machine refuses."""
    check_one_machine(task, chosen, seed_spread(task, target.with_name(
        target.name.removesuffix(SELECTION_SUFFIX) + ".json")), preset)
    reasons = reasons_for(target.with_suffix(".json"))
    notes = notes + uncommitted_lines([r for _, grid in chosen.values() for r in grid], reasons)
    decisions = decide(task, preset_config, chosen)
    with table_lock(target.with_suffix(".json")):
        write_json(target.with_suffix(".json"), {
            "rule": "best validation main metric at the best epoch, ties: lower p; all points equal: no signal, "
                    "the preset's p (else the lowest point)",
            "chosen": decisions,
            "runs": [{k: v for k, v in r.items() if k not in ("details", "table")}
                     for _, grid in chosen.values() for r in grid]})
        write_text(target.with_suffix(".md"), selection_markdown(task, preset, chosen, notes, decisions,
                                                       target.stem.removesuffix(SELECTION_SUFFIX)))
    for variant, decision in decisions.items():
        if decision["no_signal"]:
            print(f"warning: {task.name} {variant}: {_decision_text(task, decision, chosen[variant][1])}",
                  file=sys.stderr)
    return decisions


def selection_markdown(task, preset, chosen, notes, decisions=None, label=None):
    decisions = decisions or decide(task, task.presets[preset], chosen)
    metric = f"validation {task.main_metric}"
    seeds = sorted({r["seed"] for _, grid in chosen.values() for r in grid})
    machines = {machine_key(r.get("provenance", {})) for _, grid in chosen.values() for r in grid}
    lines = [f"# {task.name} / {label or preset}: each scheme's p, chosen on validation", "",
             f"Rule: one seed per grid point (seed {', '.join(map(str, seeds))}), trained with `--valid-only` (the test split is never read); the point "
             f"with the best {metric} at its best epoch is chosen (ties: the lower p). A choice marked (edge) is "
             "its grid's lowest or highest p: a point beyond it may do better. A grid whose points all give the "
             "same value has no signal: nothing is chosen and the preset's p (else the lowest point) is used. "
             "Regenerated by `python -m benchmarks.select` or `benchmarks.grid`.", ""]
    if preset in task.preset_notes:
        lines += [f"**{task.preset_notes[preset]}**", ""]
    if len(machines) > 1:
        lines += [f"**The grid points ran on {len(machines)} machines** (named per point): a choice between points "
                  "of two machines stands only where their gap exceeds one seed's spread.", ""]
    commits = {r.get("provenance", {}).get("git_commit") for _, grid in chosen.values() for r in grid}
    if len(commits) > 1:
        lines += [f"The grid points ran from {len(commits)} commits (each named under Provenance).", ""]
    lines += [f"| scheme | grid point: {metric} (best epoch) | chosen |", "|---|---|---|"]
    entries = {}
    for variant, (best, grid) in chosen.items():
        cells = ", ".join(f"{p_text(r)}: {r['metrics'][f'valid_{task.main_metric}']:.2f} ({r['best_epoch']})"
                          + (f" [{machine_name(r.get('provenance', {}))}]" if len(machines) > 1 else "")
                          + (" [uncommitted code]" if is_dirty(r) else "")
                          for r in grid)
        decision = decisions[variant]
        mark = " [uncommitted code]" if is_dirty(best) and not decision["no_signal"] else ""
        lines.append(f"| {variant} | {cells} | {_decision_text(task, decision, grid)}{mark} |")
        cell = decision["zoneout_cell"]
        if not decision["no_signal"]:  # nothing was chosen: nothing to copy into a preset
            entries[variant] = decision["dropout"] if cell is None else [decision["dropout"], cell]
    zaremba = entries.pop("zaremba", None)
    lines.append("")
    if zaremba is not None:
        lines.append(f"Preset entry: `dropout={zaremba}` (the paper's scheme sets the preset's own p)")
    if entries:
        lines.append(f"Preset entry: `scheme_dropout={entries}`")
    lines += ["", "## Provenance", ""]
    for variant, (_, grid) in chosen.items():
        for r in grid:
            prov = r["provenance"]
            where = prov.get("gpu") or prov.get("cpu_model", "")
            lines.append(f"- {variant} p={p_text(r)} seed {r['seed']}: {code_version(prov)}, "
                         f"{prov['device']} {where}, finished {r.get('finished', '?')}; `{prov['command']}`")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"
