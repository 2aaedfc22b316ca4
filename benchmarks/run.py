"""Train a task's variants (with versus without dropout) and write results/<task>/<preset>.{json,md,png}
and the overview results/README.md.

    python -m benchmarks.run --task mt                               # the task's default preset (cpu)
    python -m benchmarks.run --task lm --preset cpu                  # none vs zaremba
    python -m benchmarks.run --task lm --preset small --variants none
    python -m benchmarks.run --list
    python -m benchmarks.run --user-dir my_tasks --task charlm     # a task of your own (see docs/extending.md)
"""
import argparse
import os
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from core import SCHEMES, Trainer, TrainConfig, distributed
from core.graphs import check_graphable
from core.trainer import Interrupted, autocast, resolve_precision
from core.cache import ENV_CACHE_DIR
from core.interrupt import ENV_STOP_WITH_PARENT, stop_with_parent
from core.download import ENV_DATA_DIR, DataError, data_root
from core.monitor import rounded
from core.locks import release
from core.utils import WriteError, did_you_mean, pick_device, provenance, seed_everything, write_text
from tasks.base import TASKS, Task, get_task
from benchmarks import plan as planning
from benchmarks.cli import (add_device_flags, add_user_dir_flag, check_folders, list_tasks, load_task_registry,
                            lock_runs, move_aside, prepare_process, runs_in_the_way, unwritable_folder)
from benchmarks.uncommitted import warn_if_uncommitted
from benchmarks.merge import folder_in_the_way
from benchmarks.report import check_consistent, load_runs, write_overview, write_results
from benchmarks.runconfig import (  # noqa: F401 (re-exported: select and plan read them from here)
    check_distinct, check_preset, declared_keys, p_source, parse_fixed_p, parse_overrides, parse_seeds,
    preset_config, run_name, set_flag_named, table_label)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
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
    p.add_argument("--epochs", type=int, help="override the preset's epoch count (results go to <preset>-e<N>)")
    p.add_argument("--dropout", type=float, help="override the preset's dropout p (results go to <preset>-p<P>)")
    p.add_argument("--p", metavar="SCHEME=P,...",
                   help="fix each scheme's p by hand, e.g. zaremba=0.3,mine=0.1 (zoneout: P/PC for hiddens/cells); "
                        "the runs stay in the preset's table, which says where each p came from")
    p.add_argument("--p-source", help=argparse.SUPPRESS)  # benchmarks.grid: "chosen on validation (<its table>)"
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any preset key, e.g. --set src=de --set test_set=test_2017_flickr (repeatable; "
                        "results go to <preset>-KEY=VALUE)")
    p.add_argument("--data-dir", help=f"dataset root (default: ${ENV_DATA_DIR}, else ~/.cache/rnnreg)")
    p.add_argument("--cache-dir", help=f"cache for derived data such as features (default: ${ENV_CACHE_DIR}, "
                                       "else ~/.cache/rnnreg/cache)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--custom-data", action="store_true",
                   help="train on data files that fail the canonical checksums (your own copy); the results say so")
    add_device_flags(p)
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
    try:
        args.device = pick_device(args.device)
        args.precision = resolve_precision(args.precision, args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.cuda_graphs and (problem := check_graphable(task_cls, args.device, schemes=args.variants)):
        parser.error(problem)
    return task_cls


def run_label(args):
    return table_label(TASKS[args.task], args.preset, args.epochs, args.dropout, args.overrides, args.precision,
                       args.valid_only, args.device)


def run_config(task_cls, args, variant, seed):
    config = preset_config(task_cls, args.preset, args.epochs, args.overrides)
    per_scheme = config.pop("scheme_dropout", None) or {}
    fixed = getattr(args, "fixed_p", {})
    if args.dropout is not None:
        config["dropout"] = args.dropout
    elif variant in fixed:
        config["dropout"], cell = fixed[variant]
        if cell is not None:
            config["zoneout_cell"] = cell
    elif variant in per_scheme:
        chosen = per_scheme[variant]  # zoneout may give [p for h, p for c]
        config["dropout"], cell = (chosen, None) if isinstance(chosen, (int, float)) else chosen
        if cell is not None:
            config["zoneout_cell"] = cell
    if variant == "none":
        config["dropout"] = 0.0
    if variant != "zoneout":
        config.pop("zoneout_cell", None)  # zoneout's own setting: the other variants' configs stay as they were
    graphs = {"cuda_graphs": True} if args.cuda_graphs else {}  # recorded: a table's runs share one config
    return {**config, "scheme": variant, "seed": seed, "precision": args.precision, **graphs}


def print_plan(task_cls, args, label):
    """The one-paragraph plan of benchmarks.plan: what this command trains, one run after the other, and how long
    it takes by the wall times recorded in --out."""
    jobs = []
    for variant in args.variants:
        for seed in args.seeds:
            config = run_config(task_cls, args, variant, seed)
            jobs.append(planning.Job(args.task, args.preset, label, variant, seed,
                                     (config["dropout"], config.get("zoneout_cell")), kind="select" * args.valid_only
                                     or "run", p_from=p_source(task_cls, args, variant)))
    settings = planning.Settings(out=args.out, run_dir=args.run_dir, epochs=args.epochs, precision=args.precision)
    planning.print_plan(jobs, settings, planning.device_name(str(args.device)), 1,
                        "one after the other; benchmarks.grid runs them in parallel")


def make_task(task_cls, args, config):
    task = task_cls(config, data_root(args.data_dir), download=not args.no_download, custom_data=args.custom_data,
                    cache_dir=args.cache_dir)
    task.load_data()
    return task


def train_one(task_cls, args, config, run_dir, origin):
    """Train one variant/seed; returns its results entry."""
    started = time.time()
    task = make_task(task_cls, args, config)
    seed_everything(config["seed"])
    model = task.build_model()
    every = None if args.checkpoint_every is None else args.checkpoint_every * 60
    label = f"{args.task}/{args.preset} {config['scheme']} p={config['dropout']:g} seed {config['seed']}"
    trainer = Trainer(task, model, TrainConfig.from_dict(config), run_dir, args.device, progress=not args.no_progress,
                      checkpoint_every=every, label=label, tensorboard=not args.no_tensorboard,
                      cuda_graphs=config.get("cuda_graphs", False))
    result = trainer.fit(resume=args.resume, test=not args.valid_only)
    if result is None:  # a DDP rank other than 0
        return None, trainer.stop_requested
    if args.mc_samples:
        seed_everything(config["seed"])  # the MC masks are reproducible
        with autocast(config["precision"], args.device):
            model = load_best(task, run_dir, args.device)
            for split in ("valid",) if args.valid_only else ("valid", "test"):
                bar = None if args.no_progress else dict(desc=f"{split} MC {args.mc_samples}", leave=False)
                mc = task.mc_dropout_metrics(model, split, args.device, args.mc_samples, progress=bar,
                                             resume=run_dir / f"mc-{split}.partial.pt")
                result["metrics"].update({f"{split}_mc_{k}": v for k, v in mc.items()})
        result["mc"] = {"samples": args.mc_samples, "provenance": origin}
    print(f"{config['scheme']} p={config['dropout']:g} seed {config['seed']}: {rounded(result['metrics'])} "
          f"({time.time() - started:.0f} s)", flush=True)
    return {"variant": config["scheme"], "dropout": config["dropout"], "seed": config["seed"], "preset": args.preset,
            "p_from": p_source(task_cls, args, config["scheme"]), **result,
            "config": config, "provenance": origin, "data": task.data_info(),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}, trainer.stop_requested


def load_best(task, run_dir, device):
    model = task.build_model().to(device)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=False)["model"])
    return model


def evaluate_ensemble(task_cls, args, variant, run_dirs, origin):
    """Load each seed's best checkpoint and evaluate their ensemble on valid and test; returns its entry."""
    started = time.time()
    config = run_config(task_cls, args, variant, args.seeds[0])
    task = make_task(task_cls, args, config)
    models = [load_best(task, run_dir, args.device) for run_dir in run_dirs]
    with autocast(config["precision"], args.device):
        valid = task.ensemble_metrics(models, "valid", args.device)
        valid.update(task.final_metrics(models, "valid", args.device)[0])
        test = task.ensemble_metrics(models, "test", args.device)
        extra, details = task.final_metrics(models, "test", args.device)
    test.update(extra)
    details.pop("items", None)
    if "outputs" in details:
        folder = run_dirs[0].parent / f"{variant}-p{config['dropout']:g}-ensemble"
        write_text(folder / "test_outputs.txt", "".join(line + "\n" for line in details.pop("outputs")))
    metrics = {**{f"valid_{k}": v for k, v in valid.items()}, **{f"test_{k}": v for k, v in test.items()}}
    print(f"{variant} p={config['dropout']:g} ensemble of seeds {args.seeds}: {rounded(metrics)}", flush=True)
    return {"variant": variant, "dropout": config["dropout"], "seed": None, "ensemble": list(args.seeds),
            "preset": args.preset, "metrics": metrics, "best_epoch": None, "epochs": None, "history": [],
            "wall_s": round(time.time() - started, 1), "details": details, "config": {**config, "seed": None},
            "provenance": origin, "data": task.data_info(),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_table(args, task_cls, label, entries, kept_in, resume):
    """Merge the entries into their table and redraw the overview; if that fails, the runs are kept (their
    result.json) and the message gives the command that writes the table later."""
    try:
        write_results(args.out, task_cls, label, args.preset, entries)
        write_overview(args.out)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}\nThe run is kept in {kept_in} (result.json); once that is fixed, this writes its "
                 f"table without training again:\n  {resume}")


def check_mergeable(task_cls, args, label):
    """Fail before training, not after it, when the runs asked for cannot join the table already there, or a folder
    stands where one of the table's files goes."""
    table = Path(args.out) / args.task / f"{label}.json"
    for path in (table, table.with_suffix(".md"), table.with_suffix(".png")):
        if folder_in_the_way(path):
            sys.exit(f"error: {folder_in_the_way(path)}")
    planned = [{"variant": v, "seed": s, "config": run_config(task_cls, args, v, s)}
               for v in args.variants for s in args.seeds]
    try:
        check_consistent(load_runs(table) + planned, table)
    except ValueError as err:
        sys.exit(f"error: {err}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"  # one line, no source echo
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        load_task_registry(args, parser)
        return list_tasks()
    task_cls = validate(args, parser)
    if os.environ.get(ENV_STOP_WITH_PARENT):  # a run of benchmarks.select; popped: not for processes it starts
        stop_with_parent(int(os.environ.pop(ENV_STOP_WITH_PARENT)))
    prepare_process(args.threads)
    if distributed.launched_by_torchrun():  # torchrun --nproc_per_node N [--nnodes M ...] -m benchmarks.run ...
        args.device = distributed.init_from_env(str(args.device))
    main_rank = distributed.is_main()
    # Taken before training, so later edits of the working tree do not leak into this run's record.
    origin = {**provenance(args.device, "python -m benchmarks.run " + shlex.join(argv)),
              "world_size": distributed.world_size()}
    label = run_label(args)
    check_mergeable(task_cls, args, label)
    if main_rank:
        warn_if_uncommitted(origin, args.out)
    planned = {v: [Path(args.run_dir) / args.task / label / run_name(v, run_config(task_cls, args, v, s)["dropout"], s)
                   for s in args.seeds] for v in args.variants}
    check_folders(args, planned)
    held = lock_runs(planned) if main_rank else []
    try:
        train_all(task_cls, args, argv, label, planned, origin, main_rank)
    finally:
        for fd in held:
            release(fd)


def train_all(task_cls, args, argv, label, planned, origin, main_rank):
    """Train every planned run (the run dirs are locked) and write their table."""
    if main_rank and len(args.variants) * len(args.seeds) > 1:
        print_plan(task_cls, args, label)
    try:
        in_the_way = runs_in_the_way([d for dirs in planned.values() for d in dirs], args.resume, args.overwrite)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if main_rank:
        for run_dir in in_the_way:
            print(f"--overwrite: moved {run_dir} aside to {move_aside(run_dir)}", flush=True)
    distributed.barrier()
    launcher = "torchrun ... -m benchmarks.run " if distributed.world_size() > 1 else "python -m benchmarks.run "
    resume = launcher + shlex.join(a for a in argv if a not in ("--resume", "--overwrite")) + " --resume"
    for variant in args.variants:
        run_dirs = planned[variant]
        for seed, run_dir in zip(args.seeds, run_dirs):
            config = run_config(task_cls, args, variant, seed)
            try:
                entry, stopped = train_one(task_cls, args, config, run_dir, origin)
            except WriteError as err:
                sys.exit(f"error: {err}. Make room (or fix the folder), then continue with:\n  {resume}")
            except (DataError, FloatingPointError, ValueError, OSError) as err:
                sys.exit(f"error: {err}")
            except Interrupted as stop:
                if main_rank:
                    print(f"{stop}. Continue with:\n  {resume}", file=sys.stderr)
                sys.exit(130)
            if not main_rank:  # rank 0 evaluates, decodes and writes; the other ranks are done
                continue
            write_table(args, task_cls, label, [entry], run_dir, resume)
            if stopped:  # a signal during the final test pass: the run finished first, now stop
                print(f"stopped by a signal after {run_dir} finished. Continue with:\n  {resume}", file=sys.stderr)
                sys.exit(130)
        if args.ensemble and main_rank:
            write_table(args, task_cls, label, [evaluate_ensemble(task_cls, args, variant, run_dirs, origin)],
                        run_dirs[0].parent, resume)
    if main_rank:
        print(f"wrote {Path(args.out) / args.task / label}.{{json,md,png}}")


if __name__ == "__main__":
    main()
