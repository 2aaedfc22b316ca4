"""The paper's Table 1 in one command: PTB small (no dropout), medium (zaremba, two seeds) and large (zaremba).

    python -m benchmarks.paper --device cuda                  # the whole table, jobs side by side on one GPU
    python -m benchmarks.paper --device cuda --precision tf32 # TF32 matmuls (results/lm/<preset>-tf32.*)
    python -m benchmarks.paper --device cuda --cuda-graphs    # steps replayed from CUDA graphs (no launch overhead)
    python -m benchmarks.paper --dry-run                      # the plan, nothing run

One plan of benchmarks.grid: each (preset, variant, seed) is one `benchmarks.run --resume` process with a
checkpoint every few minutes, so a cut command continues where it stopped when run again. The jobs run
`--parallel` at a time (default: all of them on a GPU, where the LM's small batches leave the device mostly idle,
so side by side is faster than one after the other; one at a time on a CPU). Each job's row lands in
results/lm/<preset>.{md,json,png} (<preset>-tf32, <preset>-bf16, or <preset>-bf16-cpu for bf16 on a CPU; with
the paper's columns) the moment it ends, under the table's lock; SIGTERM stops the running jobs at a checkpoint
and keeps every finished row. The paper
trained in fp32: that is the default here (TF32 off); `--precision tf32` allows TF32 and labels its tables so.
"""
import argparse
import sys
from pathlib import Path

from benchmarks.jobs import plan as planning
from benchmarks.jobs.runner import runner_text
from benchmarks.jobs.executors import LocalExecutor
from benchmarks.jobs.flags import (add_cuda_graphs_flag, add_data_flags, add_device_flag, add_precision_flag,
                                   add_threads_flag, passed_on, resolve_jobs_device)
from benchmarks.jobs.scheduler import Grid
from benchmarks.jobs.display import Display, summary_lines
from benchmarks.jobs.config import check_distinct
from benchmarks.tables.labels import table_label
from tasks.base import load_tasks

TABLE1 = (("small", "none", 1), ("medium", "zaremba", 1), ("medium", "zaremba", 2), ("large", "zaremba", 1))


def parse_jobs(text):
    """'small:none:1,medium:zaremba:2' -> [(preset, variant, seed)]."""
    jobs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"bad job {item!r}: give PRESET:VARIANT:SEED (a seed >= 0), e.g. medium:zaremba:1")
        jobs.append((parts[0], parts[1], int(parts[2])))
    check_distinct([f"{preset}:{variant}:{seed}" for preset, variant, seed in jobs], "--jobs")
    return jobs


def table1_plan(jobs, args):
    """(jobs of the grid, settings): one benchmarks.run --resume job per (preset, variant, seed), each checkpointing
    every few minutes and merged into results/lm/<preset>[-<precision>].json the moment it ends."""
    lm = load_tasks()["lm"]
    extra = passed_on(args) + ["--checkpoint-every", str(args.checkpoint_every)]
    settings = planning.Settings(out=args.out, run_dir=str(Path(args.work) / "runs"), extra=tuple(extra),
                                 precision=args.precision, device=args.device, logs=str(Path(args.work) / "logs"))
    planned = []
    for preset, variant, seed in jobs:
        if preset not in lm.presets:
            raise ValueError(f"bad job {preset}:{variant}:{seed}: lm has no preset {preset!r} ({', '.join(lm.presets)})")
        p = 0.0 if variant == "none" else lm.presets[preset]["dropout"]
        label = table_label(lm, preset, precision=args.precision, device=args.device)
        planned.append(planning.Job("lm", preset, label, variant, seed, (p, None),
                                    p_from="none" if variant == "none" else "preset"))
    return planned, settings


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_flag(parser, default="cuda", jobs=True)
    add_precision_flag(parser, default="fp32")  # the paper's
    parser.add_argument("--jobs", default=",".join(f"{p}:{v}:{s}" for p, v, s in TABLE1),
                        help="PRESET:VARIANT:SEED list (default: Table 1: small none, medium zaremba x2, large zaremba)")
    parser.add_argument("--parallel", type=int, help="jobs at once (default: all on a GPU, 1 on a CPU)")
    add_threads_flag(parser, per="job")
    add_cuda_graphs_flag(parser)
    parser.add_argument("--checkpoint-every", type=float, default=3.0, metavar="MINUTES",
                        help="checkpoint within an epoch every MINUTES (default 3), so a cut run resumes")
    add_data_flags(parser)
    parser.add_argument("--work", default="runs/paper", help="run dirs and logs (default runs/paper)")
    parser.add_argument("--out", default="results", help="where the tables go (default results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    args = parser.parse_args(argv)
    # a dry run names its jobs' device without needing it here (a laptop printing a GPU plan)
    device, args.precision = resolve_jobs_device(args.device, args.precision, parser, local=not args.dry_run)
    args.device = str(device)
    try:
        jobs, settings = table1_plan(parse_jobs(args.jobs), args)
    except ValueError as err:
        parser.error(str(err))
    parallel = args.parallel or (len(jobs) if args.device.startswith("cuda") else 1)
    if parallel < 1:
        parser.error(f"--parallel must be >= 1, got {parallel}")
    device = args.device if args.device == "cpu" or args.dry_run else planning.device_name(args.device)
    planning.print_plan(jobs, settings, device, parallel, every_job=args.dry_run)
    if args.dry_run:
        print("\n".join(runner_text(planning.job_argv(job, settings)) for job in jobs))
        return 0
    grid = Grid(jobs, settings, LocalExecutor(), parallel, Display(), device)
    grid.run()  # each job's rows land in its table as it ends; SIGTERM stops the running ones at a checkpoint
    print("\n".join(summary_lines(grid, settings)), flush=True)
    return 128 + grid.stop_signal if grid.stopping else 1 if "failed" in grid.status else 0


if __name__ == "__main__":
    sys.exit(main())
