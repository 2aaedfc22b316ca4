"""The paper's Table 1 in one command: PTB small (no dropout), medium (zaremba, two seeds) and large (zaremba).

    python -m benchmarks.paper --device cuda                  # the whole table, jobs side by side on one GPU
    python -m benchmarks.paper --device cuda --precision tf32 # TF32 matmuls (results/lm/<preset>-tf32.*)
    python -m benchmarks.paper --device cuda --cuda-graphs    # steps replayed from CUDA graphs (no launch overhead)
    python -m benchmarks.paper --dry-run                      # the plan, nothing run

Each (preset, variant, seed) is one `benchmarks.run --resume` process with a checkpoint every few minutes, so a
cut command continues where it stopped when run again. The jobs run `--parallel` at a time (default: all of
them on a GPU, where the LM's small batches leave the device mostly idle, so side by side is faster than one
after the other; one at a time on a CPU). Their tables are merged into results/lm/<preset>.{md,json,png}
(benchmarks.report --into: what was added, replaced or refused is printed), with the paper's columns. The paper
trained in fp32: that is the default here (TF32 off); `--precision tf32` allows TF32 and labels its tables so.
"""
import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.interrupt import ENV_STOP_WITH_PARENT

TABLE1 = (("small", "none", 1), ("medium", "zaremba", 1), ("medium", "zaremba", 2), ("large", "zaremba", 1))


def parse_jobs(text):
    """'small:none:1,medium:zaremba:2' -> [(preset, variant, seed)]."""
    jobs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise ValueError(f"bad job {item!r}: give PRESET:VARIANT:SEED, e.g. medium:zaremba:1")
        jobs.append((parts[0], parts[1], int(parts[2])))
    return jobs


def job_command(preset, variant, seed, args):
    label = preset + ("" if args.precision == "fp32" else f"-{args.precision}")
    out = Path(args.work) / "out" / f"{preset}-{variant}-{seed}"
    command = [sys.executable, "-m", "benchmarks.run", "--task", "lm", "--preset", preset, "--variants", variant,
               "--seeds", str(seed), "--device", args.device, "--precision", args.precision, "--resume",
               "--checkpoint-every", str(args.checkpoint_every), "--out", str(out),
               "--run-dir", str(Path(args.work) / "runs"), "--no-progress"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.cuda_graphs:
        command.append("--cuda-graphs")
    return command, out / "lm" / f"{label}.json", label


def run_job(command, log):
    """One job, its output in `log`; it stops (saving its checkpoint) if this command is stopped."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "a") as f:
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, ENV_STOP_WITH_PARENT: str(os.getpid())})
    return code, time.time() - started


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                        help="fp32 (default, the paper's), tf32 (TF32 matmuls, labelled), bf16 (autocast, labelled)")
    parser.add_argument("--jobs", default=",".join(f"{p}:{v}:{s}" for p, v, s in TABLE1),
                        help="PRESET:VARIANT:SEED list (default: Table 1: small none, medium zaremba x2, large zaremba)")
    parser.add_argument("--parallel", type=int, help="jobs at once (default: all on a GPU, 1 on a CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per job")
    parser.add_argument("--cuda-graphs", action="store_true", help="each job replays its steps from CUDA graphs "
                        "(core.graphs; recorded in the tables' config)")
    parser.add_argument("--checkpoint-every", type=float, default=3.0, metavar="MINUTES",
                        help="checkpoint within an epoch every MINUTES (default 3), so a cut run resumes")
    parser.add_argument("--work", default="runs/paper", help="run dirs, logs and per-job tables (default runs/paper)")
    parser.add_argument("--out", default="results", help="where the merged tables go (default results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    args = parser.parse_args(argv)
    try:
        jobs = parse_jobs(args.jobs)
    except ValueError as err:
        parser.error(str(err))
    parallel = args.parallel or (len(jobs) if args.device.startswith("cuda") else 1)
    if parallel < 1:
        parser.error(f"--parallel must be >= 1, got {parallel}")
    planned = [(job, *job_command(*job, args)) for job in jobs]
    for (preset, variant, seed), command, _, _ in planned:
        print(f"{preset} {variant} seed {seed}: {' '.join(command[1:])}")
    if args.dry_run:
        return 0
    logs = Path(args.work) / "logs"
    with ThreadPoolExecutor(parallel) as pool:
        done = list(pool.map(lambda p: run_job(p[1], logs / f"{p[0][0]}-{p[0][1]}-{p[0][2]}.log"), planned))
    failed = [(job, code) for (job, *_), (code, _) in zip(planned, done) if code]
    for (job, _, _, _), (code, seconds) in zip(planned, done):
        print(f"{job[0]} {job[1]} seed {job[2]}: {'ok' if not code else f'exit {code}'} in {seconds / 60:.1f} min")
    tables = {}
    for (job, _, table, label), (code, _) in zip(planned, done):
        if not code and table.exists():
            tables.setdefault(label, []).append(str(table))
    for label, parts in tables.items():
        merged = subprocess.call([sys.executable, "-m", "benchmarks.report", *parts, "--into",
                                  str(Path(args.out) / "lm" / f"{label}.json")])
        if merged:
            failed.append(((label, "merge", None), merged))
    if failed:
        sys.exit("error: " + "; ".join(f"{j[0]} {j[1]} seed {j[2]}: exit {c} (log in {logs})" for j, c in failed)
                 + ". Run the same command again to resume.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
