"""Speed of each dropout scheme on any registered task: training and evaluation tokens/s through the real
Trainer, on random data of the preset's shape (Task.synthetic_data), so no corpus is needed.

    python -m benchmarks.speed --task lm --preset small
    python -m benchmarks.speed --task lm --preset medium --device cuda
    python -m benchmarks.speed --task lm --preset medium --device cuda --cuda-graphs --variants none,zaremba
                                                        # + rows replayed from CUDA graphs (not weightdrop)
    python -m benchmarks.speed --task mt                 # the cpu preset's shape; beam 12 and beam 1 decoding too
    python -m benchmarks.speed --user-dir my_tasks --task charlm
    python -m benchmarks.speed --checkpoint runs/mt/cpu/zaremba-p0.2-seed1/best.pt   # decoding a trained model

Beside our schemes, a task may time published peers on the same batches (Task.speed_peers; the LM: the
pytorch/examples word_language_model as published) and extra jobs (Task.speed_jobs; MT: beam decoding).
Timings are interleaved (every implementation once, then again) and the median of the repeats is reported.
Writes results/<task>/speed.json (all measurements so far) and results/<task>/speed.md.
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
from core.utils import pick_device, provenance, write_json, write_text
from benchmarks.report import SPEED_KEYS, load_runs, threads_text
from core.provenance import code_version, fp32_math_text
from benchmarks.cli import add_user_dir_flag, device_with_threads, load_task_registry
from tasks.base import get_task, load_checkpoint, load_tasks

COLUMNS = {"train_tok_s": "train tok/s", "eval_tok_s": "eval tok/s", "beam12_sent_s": "beam 12 sent/s",
           "beam1_sent_s": "beam 1 sent/s", "peak_mb": "peak memory MB"}  # other job names are shown as they are


def timed(fn, device):
    """Seconds `fn()` takes, with the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def scheme_jobs(task_cls, config, variant, device, steps, graphs=False):
    """{job: (fn, items)} for one scheme: training and evaluation passes over `steps` synthetic batches, and the
    task's extra jobs (not with `graphs`: steps replayed from CUDA graphs); plus the task object (its peers)."""
    cfg = {**config, "scheme": variant, "dropout": 0.0 if variant == "none" else config["dropout"], "seed": 1}
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

    jobs = {"train_tok_s": (train, tokens), "eval_tok_s": (evaluate, tokens)}
    if not graphs:
        jobs.update(task.speed_jobs(trainer.model, device))
    return jobs, task, batches, tokens


def peer_jobs(task, batches, tokens, device):
    jobs = {}
    for name, (train_step, eval_step) in task.speed_peers(device).items():
        jobs[name] = {"train_tok_s": (lambda f=train_step: [f(b) for b in batches], tokens),
                      "eval_tok_s": (lambda f=eval_step: [f(b) for b in batches], tokens)}
    return jobs


def measure(task_cls, config, variants, device, steps, warmup, repeats, graphs=False):
    """{implementation: {job: items per second}}: the task's peers first, then each scheme (and with `graphs`
    each scheme replayed from CUDA graphs, as "<scheme>+graphs")."""
    impls = {}
    for variant in variants:
        jobs, task, batches, tokens = scheme_jobs(task_cls, config, variant, device, steps)
        if not impls:
            impls.update(peer_jobs(task, batches, tokens, device))
        impls[variant] = jobs
        if graphs:
            impls[f"{variant}+graphs"] = scheme_jobs(task_cls, config, variant, device, steps, graphs=True)[0]
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


def peak_memory_mb(task_cls, config, variant, device, steps, user_dirs=None):
    """Peak memory of training `steps` synthetic batches: on GPU the most allocated by torch; on CPU the peak
    resident size of a fresh process that builds the task and trains (so it includes torch itself)."""
    if device.type == "cuda":
        jobs = scheme_jobs(task_cls, config, variant, device, steps)[0]
        torch.cuda.reset_peak_memory_stats(device)
        jobs["train_tok_s"][0]()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=stop_with_parent, initargs=(os.getpid(),)) as pool:
        return pool.apply(_train_in_child, (task_cls.name, user_dirs, config, variant, steps, torch.get_num_threads()))


def _train_in_child(name, user_dirs, config, variant, steps, threads):
    torch.set_num_threads(threads)
    load_tasks(user_dirs)
    jobs = scheme_jobs(get_task(name), config, variant, torch.device("cpu"), steps)[0]
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


def _shape(cfg):
    parts = [f"batch {cfg['batch_size']}"] if "batch_size" in cfg else []
    if "layers" in cfg and "hidden" in cfg:
        parts.append(f"{cfg['layers']}x{cfg['hidden']}")
    parts += [f"{k} {cfg[k]}" for k in ("bptt", "emb", "decode_batch_size") if k in cfg]
    return ", ".join(parts + [f"p={cfg['dropout']:g} for the dropout schemes"])


def markdown(task_cls, entries):
    lines = [f"# {task_cls.name} / speed", "",
             "Items per second (tokens for training and evaluation, sentences for decoding) on random data of the "
             "preset's shape: training is forward, backward, clip and optimizer step through the real Trainer; "
             "evaluation is the forward pass. Peak memory: training the same batches, on GPU the most torch "
             "allocated, on CPU the peak resident size of a fresh process (torch itself included). Produced by "
             "`python -m benchmarks.speed`; median of interleaved repeats." + (" " + task_cls.speed_notes if task_cls.speed_notes else ""), ""]
    trained = [e for e in entries if e.get("kind") == "trained"]
    for entry in [e for e in entries if e.get("kind") != "trained"]:
        prov, results = entry["provenance"], entry["results"]
        hw = prov.get("gpu") or f"{prov['cpu_model']}, {threads_text(prov['torch_threads'])}"
        jobs = list(dict.fromkeys(job for r in results.values() for job in r))
        peer = next((impl for impl in results if impl.split("+")[0] not in SCHEMES), None)
        header = ["implementation"]
        for job in jobs:
            header += [COLUMNS.get(job, job)] + ([f"vs {peer}"] if peer and job in results[peer] else [])
        lines += [f"## preset `{entry['preset']}` on {prov['device']} ({hw})", "",
                  f"{_shape(entry['config'])}; {entry['steps']} steps x {entry['repeats']} repeats.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for impl, r in results.items():
            cells = [impl]
            for job in jobs:
                value = r.get(job)
                cells.append("—" if value is None else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}")
                if peer and job in results[peer]:
                    cells.append("—" if value is None else f"{value / results[peer][job]:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"`{prov['command']}` — {code_version(prov)}, torch {prov['torch']}{fp32_math_text(prov)}, "
                      f"{entry['finished']}" + (f" ({prov['note']})" if prov.get("note") else ""), ""]
    if trained:
        lines += ["## Decoding a trained model", "",
                  "The task's own decoding (beam search as in the results, its preset's width and batch) of a trained "
                  "checkpoint over a real split: real lengths and early stops, unlike the worst case above. "
                  "`python -m benchmarks.speed --checkpoint ...`; median of the repeats. One row per checkpoint, "
                  "split, machine, threads and commit, so a row timed with older code stays beside the new one.", "",
                  "| checkpoint | split | beam | speed | device | threads | commit |", "|---|---|---|---|---|---|---|"]
        for entry in trained:
            prov = entry["provenance"]
            speed = ", ".join(f"{value:,.1f} {SPEED_KEYS[key]}" for key, value in entry["results"].items())
            machine = prov.get("gpu") or ", ".join(filter(None, (prov["cpu_model"], prov.get("cpu_capability"))))
            note = f" ({prov['note']})" if prov.get("note") else ""
            lines.append(f"| `{entry['checkpoint']}` | {entry['split']} | {entry['config'].get('beam', '—')} | "
                         f"{speed} | {prov['device']} ({machine}) | {prov['torch_threads']} | {code_version(prov)}{note} |")
        lines.append("")
    return "\n".join(lines)


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
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="results")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time each scheme's steps replayed from "
                        "CUDA graphs (rows <scheme>+graphs; tasks with static shapes, on CUDA)")
    parser.add_argument("--checkpoint", help="instead: time the decoding of this trained best.pt on --split")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="the split --checkpoint decodes (default: valid; only the speed is recorded)")
    parser.add_argument("--data-dir", help="dataset root for --checkpoint (default: $RNNREG_DATA_DIR)")
    parser.add_argument("--custom-data", action="store_true", help="as for benchmarks.run (your own copy of the data)")
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
    if preset not in task_cls.presets:
        parser.error(f"--preset {preset!r} is not a preset of task {args.task}; choose one of: "
                     f"{', '.join(task_cls.presets)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in SCHEMES for v in variants):
        parser.error(f"--variants: choose from {', '.join(SCHEMES)}, got {args.variants!r}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    device = device_with_threads(args, parser)
    if args.cuda_graphs and (problem := check_graphable(task_cls, device, schemes=variants)):
        parser.error(problem)
    config = dict(task_cls.presets[preset])
    config["dropout"] = config["dropout"] or 0.5  # a p=0 preset would time no dropout at all
    origin = provenance(device, "python -m benchmarks.speed " + shlex.join(argv))
    try:
        results = measure(task_cls, config, variants, device, args.steps, args.warmup, args.repeats, args.cuda_graphs)
        if not args.no_memory:
            for variant in variants:
                results[variant]["peak_mb"] = peak_memory_mb(task_cls, config, variant, device, args.steps,
                                                             args.user_dir)
    except NotImplementedError as err:
        sys.exit(f"error: {err}")
    entry = {"preset": preset, "config": config, "steps": args.steps, "repeats": args.repeats,
             "results": results, "provenance": origin, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.out) / task_cls.name / "speed.json"
    same = lambda e: (e.get("preset"), e["provenance"]["device"]) == (preset, origin["device"])  # noqa: E731
    entries = [e for e in load_runs(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), markdown(task_cls, entries))
    print(markdown(task_cls, [entry]))


def time_checkpoint(args, argv, parser):
    try:
        device = pick_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
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
    entries = [e for e in load_runs(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), markdown(type(task), entries))
    print(f"{args.checkpoint} on {args.split}: " + ", ".join(f"{v:,.1f} {SPEED_KEYS[k]}" for k, v in results.items()))


if __name__ == "__main__":
    main()
