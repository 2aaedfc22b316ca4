"""MC-dropout evaluation (Gal & Ghahramani 2016) against the number of passes, for trained checkpoints of any task
with Task.logits: the standard evaluation (dropout off) beside the averaged probabilities of the first K dropout
passes, for every K asked, on valid and test. One run of the largest K gives the whole curve.

    python -m benchmarks.mc runs/lm/cpu/zaremba-p0.2-seed1/best.pt runs/lm/cpu/variational-p0.1-seed1/best.pt
    python -m benchmarks.mc CHECKPOINT ... --passes 1,2,5,10,20,50,100 --jobs 2 --threads 1

Whether MC evaluation beats the standard one, and from how many passes, is read off valid; test is reported
beside it, never used to choose. Writes results/<task>/mc.{json,md,png}: every checkpoint evaluated so far (a
checkpoint evaluated again on the same device replaces its entry). `--mc-samples K` of benchmarks.run gives one
point of this curve inside the results tables.
"""
import argparse
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from core.download import DataError, data_root
from core.interrupt import stop_with_parent
from core.precision import autocast
from core.utils import provenance, seed_everything
from benchmarks.tables.mc_table import SPLITS, record
from benchmarks.jobs.flags import (add_data_flags, add_device_flag, add_threads_flag, add_user_dir_flag,
                                   device_with_threads, load_task_registry, prepare_process)
from benchmarks.tables.significance import paired_bootstrap
from tasks.base import Task, load_checkpoint, load_tasks



def evaluate(path, passes, device, threads=None, data_dir=None, custom_data=False, user_dirs=None, progress=True,
             position=0):
    """{standard: {split: metrics}, mc: {split: {K: metrics}}} of the checkpoint at `path`; `position`: the line of
    its progress bar (one per process)."""
    load_tasks(user_dirs)  # a worker process starts with an empty registry
    prepare_process(threads)
    started = time.time()
    task, model = load_checkpoint(path, device)
    data = type(task)(task.config, data_dir, download=False, custom_data=custom_data).load_data()
    standard, mc, paired = {}, {}, {}
    with autocast(task.config.get("precision", "fp32"), device):
        for split in SPLITS:
            standard[split] = data.ensemble_metrics([model], split, device, items=True)
            seed_everything(task.config["seed"])  # the masks, and so the curve, are reproducible
            bar = dict(desc=f"{Path(path).parent.name} {split} MC {max(passes)}", position=position,
                       leave=False) if progress else None
            curve = data.mc_dropout_curve(model, split, device, passes, items=True, progress=bar,
                                          resume=progress_file(path, split))
            paired[split] = item_bootstrap(curve[max(passes)].pop("items"), standard[split].pop("items"),
                                           task.main_metric)
            mc[split] = {str(k): v for k, v in curve.items()}
            print(f"{path}: {split} done ({(time.time() - started) / 60:.1f} min)", flush=True)
    config = task.config
    return {"checkpoint": str(path), "task": task.name, "label": Path(path).parent.parent.name,
            "variant": config["scheme"], "dropout": config["dropout"], "seed": config["seed"], "config": config,
            "passes": sorted(passes), "standard": standard, "mc": mc, "bootstrap": paired,
            "wall_s": round(time.time() - started, 1)}


def progress_file(checkpoint, split):
    """Where the evaluation of `split` keeps its progress (beside the checkpoint, so an interrupted command run
    again continues it), or None if that folder cannot be written."""
    folder = Path(checkpoint).parent
    if not os.access(folder, os.W_OK):
        print(f"{folder} is read-only: an interrupted evaluation of {checkpoint} will start afresh", flush=True)
        return None
    return folder / f"mc-{split}.partial.pt"


def item_bootstrap(mc_items, standard_items, metric):
    """Paired bootstrap over the split's items of MC (largest K) minus standard, or None for a metric without
    per-item statistics."""
    as_run = lambda items: {"details": {"items": items}}  # noqa: E731
    return paired_bootstrap([as_run(mc_items)], [as_run(standard_items)], metric)


def parse_passes(text, parser):
    try:
        passes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--passes must be a comma list of integers, got {text!r}")
    if not passes or passes[0] < 1:
        parser.error(f"--passes needs counts >= 1, got {text!r}")
    return passes


def check_checkpoints(paths, parser):
    """The task class shared by all checkpoints; a clear error for a missing, foreign or unsuitable one."""
    classes = set()
    for path in paths:
        try:
            task, _ = load_checkpoint(path)
        except ValueError as err:
            parser.error(str(err))
        if type(task).logits is Task.logits:
            parser.error(f"{path}: task {task.name} has no Task.logits, so it cannot be evaluated with MC dropout")
        if not task.config.get("dropout"):
            parser.error(f"{path}: trained without dropout (p=0), so MC dropout equals the standard evaluation")
        classes.add(type(task))
    if len(classes) > 1:
        parser.error(f"the checkpoints belong to different tasks ({', '.join(sorted(c.name for c in classes))}); "
                     "evaluate one task per command")
    return classes.pop()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="best.pt files written by benchmarks.run")
    parser.add_argument("--passes", default="1,2,5,10,20,50,100",
                        help="comma list of pass counts K (default: 1,2,5,10,20,50,100)")
    parser.add_argument("--jobs", type=int, default=1, help="checkpoints evaluated in parallel processes (default 1)")
    add_threads_flag(parser)
    add_device_flag(parser)
    add_data_flags(parser, download=False)
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_user_dir_flag(parser)
    args = parser.parse_args(argv)
    load_task_registry(args, parser)
    passes = parse_passes(args.passes, parser)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--jobs and --threads must be >= 1")
    task_cls = check_checkpoints(args.checkpoints, parser)
    device = device_with_threads(args, parser)
    origin = provenance(device, "python -m benchmarks.mc " + shlex.join(argv))
    job = dict(passes=passes, device=str(device), threads=args.threads, data_dir=data_root(args.data_dir),
               custom_data=args.custom_data, user_dirs=args.user_dir, progress=not args.no_progress)
    try:
        if args.jobs == 1:
            finished = (evaluate(path, **job) for path in args.checkpoints)
        else:
            pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=stop_with_parent, initargs=(os.getpid(),))
            finished = (f.result() for f in as_completed([pool.submit(evaluate, p, **job, position=i % args.jobs)
                                                           for i, p in enumerate(args.checkpoints)]))
        for entry in finished:
            entry.update(provenance=origin, finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            path = record(args.out, task_cls, entry)
            m, k = task_cls.main_metric, str(passes[-1])
            print(f"{entry['checkpoint']}: " + "; ".join(f"{split} standard {entry['standard'][split][m]:.2f}, MC {k} "
                                                        f"{entry['mc'][split][k][m]:.2f}" for split in SPLITS), flush=True)
    except (DataError, OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {path.with_suffix('')}.{{json,md,png}}")


if __name__ == "__main__":
    main()
