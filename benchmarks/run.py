"""The runner: train a task's variants (with versus without dropout) into their results table. Its command line
(flags, checks, each run's config) is benchmarks.jobs.runner; `python -m benchmarks.run --help` shows it."""
import os
import shlex
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.jobs.config import p_source, run_name
from benchmarks.jobs.flags import (check_folders, list_tasks, load_task_registry, lock_runs, move_aside, prepare_process,
                                   runs_in_the_way)
from benchmarks.jobs.plan import made_by
from benchmarks.jobs.runner import (build_parser, check_mergeable, print_plan, run_config, run_label, runner_text,
                                    validate)
from benchmarks.tables.merge import load_runs
from benchmarks.tables.overview import smoke_label, write_overview
from benchmarks.tables.task_table import write_results
from benchmarks.tables.uncommitted import warn_if_uncommitted
from core import Trainer, TrainConfig, distributed
from core.download import DataError, data_root
from core.interrupt import (ENV_STOP_WITH_PARENT, Interrupted, Stopped, command_signals, deferred_signals,
                            pause_point, stop_with_parent)
from core.locks import release
from core.monitor import rounded
from core.provenance import ROOT, code_version, machine_key, machine_name
from core.precision import autocast
from core.utils import WriteError, provenance, seed_everything, write_text


def make_task(task_cls, args, config):
    task = task_cls(config, data_root(args.data_dir), download=not args.no_download, custom_data=args.custom_data,
                    cache_dir=args.cache_dir)
    pause_point("data_load")
    task.load_data()
    return task


PROCESS = {"started": time.time(), "first_run": True}  # the imports and the checks before the first run


def job_timings(started, setup_s, result, final_s):
    """Where a run's time went, each phase recorded so that a plan can estimate whole jobs: the process start-up
    before it (the process's first run only), data and model setup, training (all epochs, resumed ones too) and
    the final evaluation. The table write after it is the grid's to time."""
    startup_s = max(started - PROCESS["started"], 0.0) if PROCESS["first_run"] else 0.0
    PROCESS["first_run"] = False
    return {"startup_s": round(startup_s, 3), "setup_s": round(setup_s, 3), "train_s": result["wall_s"],
            "final_s": final_s}


def train_one(task_cls, args, config, run_dir, origin):
    """Train one variant/seed; returns its results entry."""
    started = time.time()
    task = make_task(task_cls, args, config)
    seed_everything(config["seed"])
    model = task.build_model()
    setup_s = time.time() - started
    every = None if args.checkpoint_every is None else args.checkpoint_every * 60
    label = f"{args.task}/{args.preset} {config['scheme']} p={config['dropout']:g} seed {config['seed']}"
    trainer = Trainer(task, model, TrainConfig.from_dict(config), run_dir, args.device, progress=not args.no_progress,
                      checkpoint_every=every, label=label, tensorboard=not args.no_tensorboard,
                      cuda_graphs=config.get("cuda_graphs", False))
    result = trainer.fit(resume=args.resume, test=not args.valid_only)
    if result is None:  # a DDP rank other than 0
        return None, trainer.stop_requested
    result["timings"] = job_timings(started, setup_s, result, trainer.final_s)
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
        with deferred_signals():  # the table's json, md and png, and the overview: all written, then a signal acts
            pause_point("table_write")
            write_results(args.out, task_cls, label, args.preset, entries)
            write_overview(args.out, label if smoke_label(label) and not args.valid_only else None)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}\nThe run is kept in {kept_in} (result.json); once that is fixed, this writes its "
                 f"table without training again:\n  {resume}")


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
    try:
        check_mergeable(task_cls, args, label)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if main_rank:
        warn_if_uncommitted(origin, args.out)
    planned = {v: [Path(args.run_dir) / args.task / label / run_name(v, run_config(task_cls, args, v, s)["dropout"], s)
                   for s in args.seeds] for v in args.variants}
    if main_rank:
        warn_if_replacing(task_cls, args, label, origin, planned)
    pause_point("checks")  # tests: a signal before the command takes signals over
    check_folders(args, planned)
    held = lock_runs(planned) if main_rank else []
    try:
        with command_signals():
            train_all(task_cls, args, argv, label, planned, origin, main_rank)
    except Stopped as stop:  # a signal outside training: what was written is whole
        if main_rank:
            print(f"{stop}: the runs finished so far are in {Path(args.out) / args.task / label}.json; an unfinished "
                  f"one keeps its last checkpoint. Continue with:\n  {resume_command(argv)}", file=sys.stderr)
        sys.exit(stop.exit_code)
    finally:
        for fd in held:
            release(fd)


def warn_if_replacing(task_cls, args, label, origin, planned):
    """Before training into the repository's results/: the committed rows this command will train again and
    replace that other code or another machine made (a user's first run of the quick start, say). A finished run
    dir is reused, not trained (its row stays), so it is left out."""
    table = Path(args.out) / args.task / f"{label}.json"
    if Path(args.out).resolve() != ROOT / "results" or not table.is_file() or not _committed(table):
        return
    trained = {(v, run_config(task_cls, args, v, s)["dropout"], s) for v in args.variants
               for s, run_dir in zip(args.seeds, planned[v]) if args.overwrite or not (run_dir / "result.json").exists()}
    here = (origin["git_commit"], origin.get("source_hash"), machine_key(origin))
    replaced = [r for r in load_runs(table) if (r["variant"], r["dropout"], r["seed"]) in trained
                and not made_by(r.get("provenance", {}), here)]
    if replaced:
        made = sorted({f"{machine_name(r['provenance'])}, {code_version(r['provenance'])}" for r in replaced})
        rows = ", ".join(f"{r['variant']} seed {r['seed']}" for r in replaced)
        warnings.warn(f"this command replaces {len(replaced)} committed row(s) of {table} ({rows}) made on "
                      f"{'; '.join(made)} with this machine's (git keeps the old ones); --out DIR leaves the "
                      "committed table as it is")


def _committed(path):
    """Whether git tracks `path` (False outside a checkout)."""
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                              capture_output=True).returncode == 0
    except OSError:
        return False


def resume_command(argv):
    """This command again, continuing what it started (`--resume`)."""
    launcher = "torchrun ... -m" if distributed.world_size() > 1 else "python -m"
    return runner_text([a for a in argv if a not in ("--resume", "--overwrite")] + ["--resume"], launcher)


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
    resume = resume_command(argv)
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
                sys.exit(stop.exit_code)
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
