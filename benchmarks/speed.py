"""Speed of each dropout scheme on any registered task: training and evaluation tokens/s through the real
Trainer, on random data of the preset's shape (Task.synthetic_data), so no corpus is needed.

    python -m benchmarks.speed --task lm --preset small
    python -m benchmarks.speed --task lm --preset medium --device cuda
    python -m benchmarks.speed --task lm --preset medium --device cuda --cuda-graphs --variants none,zaremba
                                                        # + rows replayed from CUDA graphs (not weightdrop)
    python -m benchmarks.speed --task mt                 # the cpu preset's shape; beam 12 and beam 1 decoding too
    python -m benchmarks.speed --task lm --preset small --precision fp32,bf16   # + rows <scheme>-bf16 (autocast)
    python -m benchmarks.speed --task lm --preset small --variants zaremba --precision fp32,bf16 --profile
                                                        # torch.profiler's top ops of a training pass, no timing
    python -m benchmarks.speed --user-dir my_tasks --task charlm
    python -m benchmarks.speed --checkpoint runs/mt/cpu/zaremba-p0.2-seed1/best.pt   # decoding a trained model

Beside our schemes, a task may time published peers on the same batches (Task.speed_peers; the LM: the
pytorch/examples word_language_model as published) and extra jobs (Task.speed_jobs; MT: beam decoding).
Timings are interleaved (every implementation once, then again: A B A B ..., so drift hits all alike) and the
median of the repeats is reported. `--precision bf16` times each scheme under bf16 autocast as well (its training,
evaluation and extra jobs; the peers stay fp32, as published) where the device has native bf16; elsewhere it says
so and times no bf16 row. Writes results/<task>/speed.json (all measurements so far, one entry per preset,
machine, threads, code version and precisions) and results/<task>/speed.md.
"""
import argparse
import itertools
import multiprocessing
import os
import resource
import shlex
import statistics
from collections import defaultdict
import sys
import time
from pathlib import Path

import torch

from core import SCHEMES, Trainer, TrainConfig
from core.download import DataError, data_root
from core.graphs import check_graphable
from core.interrupt import stop_with_parent
from core.precision import NATIVE_BF16_FLAGS, autocast, cpu_bf16_flags, native_bf16
from core.utils import pick_device, provenance, write_json, write_text
from benchmarks.tables.merge import read_json
from benchmarks.tables.task_table import SPEED_KEYS
from benchmarks.jobs.config import check_preset
from benchmarks.timing.bound import step_bound
from benchmarks.tables.uncommitted import reasons_for
from benchmarks.tables.speed_table import SPEED_PRECISIONS, machine_text, speed_markdown, row_name
from core.provenance import code_version, cpu_model
from benchmarks.jobs.flags import (add_data_flags, add_device_flag, add_precision_flag, add_threads_flag,
                                   add_user_dir_flag, device_with_threads, load_task_registry, prepare_process)
from tasks.base import get_task, load_checkpoint, load_tasks


def timed(fn, device):
    """Seconds `fn()` takes, with the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def scheme_jobs(task_cls, config, variant, device, steps, graphs=False, precision="fp32"):
    """{job: (fn, items)} for one scheme: training and evaluation passes over `steps` synthetic batches, and the
    task's extra jobs (not with `graphs`: steps replayed from CUDA graphs), all under `precision`'s autocast;
    plus the task object (its peers)."""
    cfg = {**config, "scheme": variant, "dropout": 0.0 if variant == "none" else config["dropout"], "seed": 1,
           "precision": precision}
    task = task_cls(cfg)
    task.synthetic_data(batches=steps, seed=0)
    torch.manual_seed(0)
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(cfg), None, device, progress=False,
                      cuda_graphs=graphs)
    batches = list(itertools.islice(task.batches("train", device), steps))
    with torch.no_grad():
        tokens = sum(task.forward(trainer.model, batch, None).count for batch in batches)
    state = [None]

    def train():
        trainer.model.train()
        for batch in batches:
            state[0] = trainer.train_step(batch, state[0]).state

    @torch.no_grad()
    def evaluate():
        trainer.model.eval()
        eval_state = None  # carried from batch to batch as Trainer.evaluate does (graphs need a state to replay)
        for batch in batches:
            eval_state = trainer.eval_step(batch, eval_state).state

    jobs = {"train_tok_s": (train, tokens), "eval_tok_s": (evaluate, tokens)}  # the Trainer autocasts its steps
    if not graphs:
        for job, (fn, items) in task.speed_jobs(trainer.model, device).items():
            jobs[job] = (_under(fn, precision, device), items)
    return jobs, task, batches, tokens


def _under(fn, precision, device):
    """`fn` run under `precision`'s autocast, as a run's own decoding is (benchmarks.run)."""
    def run():
        with autocast(precision, device):
            return fn()
    return run


def peer_jobs(task, dropout, batches, tokens, device):
    """The task's published peers at the schemes' p (2026-11-30 to 12-06 they took the first scheme's: `none`, p=0)."""
    jobs = {}
    for name, (train_step, eval_step) in task.speed_peers(device, dropout).items():
        jobs[name] = {"train_tok_s": (lambda f=train_step: [f(b) for b in batches], tokens),
                      "eval_tok_s": (lambda f=eval_step: [f(b) for b in batches], tokens)}
    return jobs


def implementations(task_cls, config, variants, device, steps, graphs=False, precisions=("fp32",)):
    """{implementation: {job: (fn, items)}}: the task's peers first (fp32, as published), then each scheme in each
    precision ("<scheme>", "<scheme>-bf16"; with `graphs` also replayed from CUDA graphs, "<scheme>+graphs")."""
    impls = {}
    for variant, precision in itertools.product(variants, precisions):
        name = row_name(variant, precision)
        jobs, task, batches, tokens = scheme_jobs(task_cls, config, variant, device, steps, precision=precision)
        if not impls:
            impls.update(peer_jobs(task, config["dropout"], batches, tokens, device))
        impls[name] = jobs
        if graphs:
            impls[f"{name}+graphs"] = scheme_jobs(task_cls, config, variant, device, steps, graphs=True,
                                                  precision=precision)[0]
    return impls


def measure(task_cls, config, variants, device, steps, warmup, repeats, graphs=False, precisions=("fp32",)):
    """{implementation: {job: items per second}} (see `implementations`): every job of every implementation once
    per repeat, in the same order each time, and the median of the repeats."""
    impls = implementations(task_cls, config, variants, device, steps, graphs, precisions)
    for jobs in impls.values():  # warm-up: allocations and kernel choice
        for fn, _ in jobs.values():
            for _ in range(warmup):
                timed(fn, device)
    times = {impl: {job: [] for job in jobs} for impl, jobs in impls.items()}
    for _ in range(repeats):
        for impl, jobs in impls.items():
            for job, (fn, _) in jobs.items():
                times[impl][job].append(timed(fn, device))
    return {impl: {job: impls[impl][job][1] / statistics.median(ts) for job, ts in jobs.items()}
            for impl, jobs in times.items()}


def peak_memory_mb(task_cls, config, variant, device, steps, user_dirs=None, precision="fp32"):
    """Peak memory of training `steps` synthetic batches: on GPU the most allocated by torch; on CPU the peak
    resident size of a fresh process that builds the task and trains (so it includes torch itself)."""
    if device.type == "cuda":
        jobs = scheme_jobs(task_cls, config, variant, device, steps, precision=precision)[0]
        torch.cuda.reset_peak_memory_stats(device)
        jobs["train_tok_s"][0]()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=stop_with_parent, initargs=(os.getpid(),)) as pool:
        return pool.apply(_train_in_child, (task_cls.name, user_dirs, config, variant, steps, torch.get_num_threads(),
                                            precision))


def _train_in_child(name, user_dirs, config, variant, steps, threads, precision="fp32"):
    prepare_process(threads)
    load_tasks(user_dirs)
    jobs = scheme_jobs(get_task(name), config, variant, torch.device("cpu"), steps, precision=precision)[0]
    jobs["train_tok_s"][0]()
    return _peak_rss_mb()


def _peak_rss_mb():
    """This process's peak resident size. Linux: VmHWM, which starts afresh at exec (ru_maxrss would keep the
    parent's peak from before the exec that started this child)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def trained_decoding(path, split, device, data_dir, repeats, custom_data=False):
    """Decoding speed of a trained checkpoint on a real split (its length distribution and early stops), from the
    task's own decoding (Task.final_metrics records items per second); the median of `repeats`. Only speeds are
    kept: the split's metrics are not recorded."""
    task, model = load_checkpoint(path, device)
    data = type(task)(task.config, data_dir, download=False, custom_data=custom_data).load_data()
    speeds = defaultdict(list)
    for _ in range(repeats):
        details = data.final_metrics(model, split, device)[1]
        for key in SPEED_KEYS:
            if key in details:
                speeds[key].append(details[key])
    if not speeds:
        raise ValueError(f"task {task.name} records no decoding speed: nothing to time")
    return task, {key: statistics.median(values) for key, values in speeds.items()}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lm", help="a registered task (default: lm)")
    parser.add_argument("--preset", help="a preset of the task (default: the task's default preset)")
    parser.add_argument("--variants", default=",".join(SCHEMES), help="comma list of dropout schemes to time "
                        "(default: all)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of every job first")
    parser.add_argument("--repeats", type=int, default=5)
    add_device_flag(parser)
    add_threads_flag(parser)
    parser.add_argument("--out", default="results")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time each scheme's steps replayed from "
                        "CUDA graphs (rows <scheme>+graphs; tasks with static shapes, on CUDA)")
    add_precision_flag(parser, default="fp32", several=True)
    parser.add_argument("--profile", action="store_true", help="instead of timing: torch.profiler's top ops by self "
                        "CPU time of one training pass of each implementation (nothing is written)")
    parser.add_argument("--checkpoint", help="instead: time the decoding of this trained best.pt on --split")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="the split --checkpoint decodes (default: valid; only the speed is recorded)")
    add_data_flags(parser, download=False)  # for --checkpoint
    add_user_dir_flag(parser)
    args = parser.parse_args(argv)
    load_task_registry(args, parser)
    if args.checkpoint:
        return time_checkpoint(args, argv, parser)
    try:
        task_cls = get_task(args.task)
    except ValueError as err:
        parser.error(str(err))
    preset = args.preset or task_cls.default_preset
    try:
        check_preset(task_cls, preset)
    except ValueError as err:
        parser.error(str(err))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in SCHEMES for v in variants):
        parser.error(f"--variants: choose from {', '.join(SCHEMES)}, got {args.variants!r}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    precisions = list(dict.fromkeys(p.strip() for p in args.precision.split(",") if p.strip()))
    if not precisions or any(p not in SPEED_PRECISIONS for p in precisions):
        parser.error(f"--precision: a comma list of {', '.join(SPEED_PRECISIONS)}, got {args.precision!r}")
    device = device_with_threads(args, parser)
    precisions = native_precisions(precisions, device)
    if args.cuda_graphs and (problem := check_graphable(task_cls, device, schemes=variants)):
        parser.error(problem)
    config = dict(task_cls.presets[preset])
    config["dropout"] = config["dropout"] or 0.5  # a p=0 preset would time no dropout at all
    if args.profile:
        from benchmarks.timing.profile import print_profiles

        return print_profiles(implementations(task_cls, config, variants, device, args.steps, args.cuda_graphs,
                                              precisions), device)
    origin = provenance(device, "python -m benchmarks.speed " + shlex.join(argv))
    try:
        results = measure(task_cls, config, variants, device, args.steps, args.warmup, args.repeats, args.cuda_graphs,
                          precisions)
        if not args.no_memory:
            for variant, precision in itertools.product(variants, precisions):
                results[row_name(variant, precision)]["peak_mb"] = peak_memory_mb(
                    task_cls, config, variant, device, args.steps, args.user_dir, precision)
        bound = step_bound(bound_task(task_cls, config), precisions, device)  # after the timing: nothing beside it
    except NotImplementedError as err:
        sys.exit(f"error: {err}")
    entry = {"preset": preset, "bound": bound, "config": config, "steps": args.steps, "repeats": args.repeats, "precisions": precisions,
             "peer_dropout": config["dropout"], "results": results, "provenance": origin, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.out) / task_cls.name / "speed.json"
    same = lambda e: e.get("kind") != "trained" and _entry_key(e) == _entry_key(entry)  # noqa: E731
    entries = [e for e in read_json(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), speed_markdown(task_cls, entries, reasons_for(path)))
    print(speed_markdown(task_cls, [entry]))


def bound_task(task_cls, config):
    """The task on one synthetic batch: what its training_products need (the vocabulary's size)."""
    task = task_cls({**config, "scheme": "none", "seed": 1})
    task.synthetic_data(batches=1, seed=0)
    return task


def _entry_key(entry):
    """One entry (one table section) per preset, machine, threads, code version and set of precisions: a run on
    another machine, with other threads, newer code or other precisions keeps the older section beside it."""
    prov = entry["provenance"]
    return (entry.get("preset"), prov["device"], machine_text(prov), prov.get("torch_threads"), code_version(prov),
            tuple(entry.get("precisions", ["fp32"])))


def native_precisions(precisions, device):
    """`precisions` less bf16 where `device` has no native bf16 (emulated bf16 is slower than fp32: its rows would
    say nothing), which is said in one line; an error when nothing is left to time."""
    if "bf16" not in precisions or native_bf16(device):
        return precisions
    if device.type == "cuda":
        what = f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16"
    else:
        where = (f"none of {', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo" if cpu_bf16_flags() is not None
                 else "oneDNN's check")
        what = f"this CPU ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}) has no native bf16 ({where})"
    line = f"--precision bf16: {what}: no bf16 row is timed"
    left = [p for p in precisions if p != "bf16"]
    if not left:
        sys.exit(f"error: {line}, and nothing else was asked for (--precision fp32 times the fp32 rows)")
    print(line, file=sys.stderr)
    return left


def time_checkpoint(args, argv, parser):
    try:
        device = pick_device(args.device)
        prepare_process(args.threads)
        origin = provenance(device, "python -m benchmarks.speed " + shlex.join(argv))
        task, results = trained_decoding(args.checkpoint, args.split, device, data_root(args.data_dir), args.repeats,
                                         args.custom_data)
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")
    entry = {"kind": "trained", "checkpoint": args.checkpoint, "split": args.split, "config": task.config,
             "results": results, "repeats": args.repeats, "provenance": origin,
             "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.out) / task.name / "speed.json"
    # one row per checkpoint, split, device, threads and code version: timing new code keeps the old row beside it
    key = lambda e: (e.get("checkpoint"), e.get("split"), e["provenance"]["device"],  # noqa: E731
                     e["provenance"].get("torch_threads"), code_version(e["provenance"]))
    same = lambda e: key(e) == key(entry)  # noqa: E731
    entries = [e for e in read_json(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), speed_markdown(type(task), entries, reasons_for(path)))
    print(f"{args.checkpoint} on {args.split}: " + ", ".join(f"{v:,.1f} {SPEED_KEYS[k]}" for k, v in results.items()))


if __name__ == "__main__":
    main()
