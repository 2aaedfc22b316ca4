"""The runner's command line (benchmarks.run): its flags, their checks before any data is loaded, a run's config
(which p a scheme gets) and its table's label. benchmarks.grid and benchmarks.select check every job's runner
flags with this same parser before anything starts."""
import argparse
import shlex
import sys
from pathlib import Path

from benchmarks.jobs import plan as planning
from benchmarks.jobs.config import (check_distinct, check_preset, declared_keys, p_source, parse_fixed_p,
                                    parse_overrides, parse_seeds, preset_config, preset_p, set_flag_named)
from benchmarks.jobs.flags import (add_config_flags, add_cuda_graphs_flag, add_data_flags, add_device_flag,
                                   add_precision_flag, add_threads_flag, add_user_dir_flag, load_task_registry,
                                   resolve_device, resolve_precision_flag, unwritable_folder)
from benchmarks.tables.labels import table_label
from benchmarks.tables.merge import check_consistent, folder_in_the_way, load_runs
from core import SCHEMES
from core.cache import ENV_CACHE_DIR
from core.download import DataError
from core.graphs import check_graphable
from core.utils import did_you_mean
from tasks.base import TASKS, Task, get_task

DESCRIPTION = """Train a task's variants (with versus without dropout) and write results/<task>/<preset>.{json,md,png}
and the overview results/README.md.

    python -m benchmarks.run --task mt                               # the task's default preset (cpu)
    python -m benchmarks.run --task lm --preset cpu                  # none vs zaremba
    python -m benchmarks.run --task lm --preset small --variants none
    python -m benchmarks.run --list
    python -m benchmarks.run --user-dir my_tasks --task charlm     # a task of your own (see docs/extending.md)
"""


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list tasks and presets, then exit")
    p.add_argument("--task", help="a registered task: lm, mt, speech, caption or one of --user-dir (see --list)")
    add_user_dir_flag(p)
    p.add_argument("--preset", help="a preset of the task (default: the task's default, see --list)")
    p.add_argument("--variants", default="none,zaremba", help=f"comma list of dropout schemes: {', '.join(SCHEMES)}, "
                                                               "or one of --user-dir (`--user-dir D --list` shows them)")
    p.add_argument("--seeds", help="comma list of integer seeds (default: 1, or 1..N with --ensemble N, or what the "
                                   "task's preset asks for, e.g. speech's six speaker folds)")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train N seeds of each variant and also evaluate their ensemble (averaged probabilities), "
                        "reported as its own row (default: the preset's 'ensemble' key, if it has one and no --seeds "
                        "are given)")
    p.add_argument("--mc-samples", type=int, metavar="K",
                   help="also evaluate each run's best checkpoint with MC dropout (Gal & Ghahramani 2016): dropout on, "
                        "K passes' probabilities averaged (valid_mc_*/test_mc_* beside the standard numbers); with "
                        "--resume, finished runs are evaluated without retraining")
    p.add_argument("--dropout", type=float, help="override the preset's dropout p (results go to <preset>-p<P>)")
    add_config_flags(p)
    p.add_argument("--p-source", help=argparse.SUPPRESS)  # benchmarks.grid: "chosen on validation (<its table>)"
    add_data_flags(p)
    p.add_argument("--cache-dir", help=f"cache for derived data such as features (default: ${ENV_CACHE_DIR}, "
                                       "else ~/.cache/rnnreg/cache)")
    add_device_flag(p)
    add_threads_flag(p)
    add_precision_flag(p)
    add_cuda_graphs_flag(p)
    p.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                   help="also checkpoint within an epoch every MINUTES (default: at the end of each epoch only); "
                        "SIGTERM/SIGINT always save one before stopping, and --resume continues exactly")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--run-dir", default="runs", help="checkpoints and logs (default: runs/)")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint (and "
                                                          "reuse finished ones)")
    p.add_argument("--overwrite", action="store_true", help="start runs again whose run dir holds an earlier run; the "
                                                             "old run dir is moved aside to <dir>.old-<time>")
    p.add_argument("--valid-only", action="store_true",
                   help="selection runs: train and validate (decoding metrics included) but never read the test split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files in the run dirs")
    return p


def validate(args, parser):
    """Fail fast, before any data is loaded, with a message naming the flag and the fix."""
    load_task_registry(args, parser)
    if not args.task:
        parser.error(f"--task is required (one of: {', '.join(sorted(TASKS))}); see --list")
    try:
        task_cls = get_task(args.task)
        args.preset = args.preset or task_cls.default_preset
        check_preset(task_cls, args.preset)
    except ValueError as err:
        parser.error(str(err))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in SCHEMES]
    if bad or not args.variants:
        parser.error(f"--variants: unknown {bad or 'empty list'}{did_you_mean(bad[:1], SCHEMES)}; choose from "
                     f"{', '.join(SCHEMES)} (schemes of your own: --user-dir)")
    try:
        check_distinct(args.variants, "--variants")
    except ValueError as err:
        parser.error(str(err))
    try:
        task_cls.check_keys(task_cls.presets[args.preset])
    except ValueError as err:
        parser.error(f"preset {args.preset}: {err}")
    args.overrides = parse_overrides(args.set, task_cls.presets[args.preset], args.preset, parser,
                                     declared_keys(task_cls))
    if args.ensemble is None and args.seeds is None:  # a preset may ask for an ensemble (key "ensemble")
        args.ensemble = task_cls.presets[args.preset].get("ensemble")
    if args.ensemble is not None and args.ensemble < 2:
        parser.error(f"--ensemble needs at least 2 members, got {args.ensemble}")
    if args.seeds is None:
        preset_seeds = None if args.ensemble else task_cls.default_seeds({**task_cls.presets[args.preset],
                                                                           **args.overrides})
        args.seeds = ",".join(map(str, preset_seeds or range(1, (args.ensemble or 1) + 1)))
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(str(err))
    if args.ensemble and len(args.seeds) != args.ensemble:
        parser.error(f"--ensemble {args.ensemble} averages {args.ensemble} seeds but --seeds gives {len(args.seeds)}; "
                     f"drop --seeds (it then defaults to 1..{args.ensemble}) or give that many")
    if args.resume and args.overwrite:
        parser.error("--resume continues the runs there, --overwrite starts them again: choose one")
    if args.ensemble and args.valid_only:
        parser.error("--valid-only trains selection runs; an ensemble would be evaluated on test: drop --ensemble")
    if args.ensemble and task_cls.logits is Task.logits:
        parser.error(f"--ensemble: task {args.task} does not support ensembles (no Task.logits)")
    if args.mc_samples is not None and (args.mc_samples < 2 or task_cls.logits is Task.logits):
        parser.error(f"--mc-samples needs K >= 2 and a task with Task.logits (got {args.mc_samples}, {args.task})")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    try:
        args.fixed_p = parse_fixed_p(args.p, args.variants)
    except ValueError as err:
        parser.error(str(err))
    args.p_from = {v: args.p_source for v in args.fixed_p} if args.p_source else {}
    if args.fixed_p and args.dropout is not None:
        parser.error("--p and --dropout both set p: give each scheme's p with --p alone")
    if args.checkpoint_every is not None and args.checkpoint_every <= 0:
        parser.error(f"--checkpoint-every must be > 0 minutes, got {args.checkpoint_every}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    unregularized = [v for v in args.variants if v != "none" and run_config(task_cls, args, v, 0)["dropout"] == 0]
    if unregularized:
        parser.error(f"preset {args.preset} has dropout 0 (the paper's non-regularized config), so variants "
                     f"{unregularized} would equal 'none'; pass --dropout P or --variants none")
    for variant in args.variants:
        for seed in args.seeds:
            config = run_config(task_cls, args, variant, seed)
            try:
                task_cls.check_config(config, args.ensemble)
            except (ValueError, DataError) as err:
                parser.error(set_flag_named(err, args.overrides))
            if not args.valid_only and task_cls.selection_only(config):
                parser.error(task_cls.selection_only(config))
    unwritable = unwritable_folder(args.out) or unwritable_folder(args.run_dir)
    if unwritable:
        parser.error(unwritable)
    args.device = resolve_device(args.device, parser)
    args.precision = resolve_precision_flag(args.precision, args.device, parser)
    if args.cuda_graphs and (problem := check_graphable(task_cls, args.device, schemes=args.variants)):
        parser.error(problem)
    return task_cls


def run_label(args):
    return table_label(TASKS[args.task], args.preset, args.epochs, args.dropout, args.overrides, args.precision,
                       args.valid_only, args.device)


def run_config(task_cls, args, variant, seed):
    config = preset_config(task_cls, args.preset, args.epochs, args.overrides)
    by_preset = preset_p(config, variant)
    config.pop("scheme_dropout", None)
    fixed = getattr(args, "fixed_p", {})
    if args.dropout is not None:
        config["dropout"] = args.dropout
    elif variant in fixed or by_preset is not None:
        config["dropout"], cell = fixed.get(variant, by_preset)
        if cell is not None:
            config["zoneout_cell"] = cell
    if variant == "none":
        config["dropout"] = 0.0
    if variant != "zoneout":
        config.pop("zoneout_cell", None)  # zoneout's own setting: the other variants' configs stay as they were
    graphs = {"cuda_graphs": True} if args.cuda_graphs else {}  # recorded: a table's runs share one config
    return {**config, "scheme": variant, "seed": seed, "precision": args.precision, **graphs}


def print_plan(task_cls, args, label):
    """The one-paragraph plan of benchmarks.jobs.plan: what this command trains, one run after the other, and how long
    it takes by the wall times recorded in --out."""
    jobs, kind = [], "select" if args.valid_only else "run"
    for variant in args.variants:
        for seed in args.seeds:
            config = run_config(task_cls, args, variant, seed)
            jobs.append(planning.Job(args.task, args.preset, label, variant, seed,
                                     (config["dropout"], config.get("zoneout_cell")), kind=kind,
                                     p_from=p_source(task_cls, args, variant)))
    settings = planning.Settings(out=args.out, run_dir=args.run_dir, epochs=args.epochs, precision=args.precision)
    planning.print_plan(jobs, settings, planning.device_name(str(args.device)), 1,
                        "one after the other; benchmarks.grid runs them in parallel")


def runner_command(argv):
    """`python -m benchmarks.run ARGV` as a process runs it: this interpreter (on a cluster node, the node's)."""
    return [sys.executable, "-m", "benchmarks.run", *argv]


def runner_text(argv, launcher="python -m"):
    """The same command as a person types it (`launcher`: "torchrun ... -m" for a distributed run)."""
    return f"{launcher} benchmarks.run {shlex.join(argv)}"


def check_mergeable(task_cls, args, label):
    """A ValueError before training, not after it, when the runs asked for cannot join the table already there
    (damaged, or of another config), or a folder stands where one of the table's files goes."""
    table = Path(args.out) / args.task / f"{label}.json"
    for path in (table, table.with_suffix(".md"), table.with_suffix(".png")):
        if folder_in_the_way(path):
            raise ValueError(folder_in_the_way(path))
    planned = [{"variant": v, "seed": s, "config": run_config(task_cls, args, v, s)}
               for v in args.variants for s in args.seeds]
    check_consistent(load_runs(table) + planned, table)
