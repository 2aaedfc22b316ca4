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
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

from core.download import DataError, data_root  # noqa: E402
from core.interrupt import stop_with_parent  # noqa: E402
from core.trainer import autocast  # noqa: E402
from core.utils import atomic_write, provenance, seed_everything, write_json, write_text  # noqa: E402
from benchmarks.merge import read_json  # noqa: E402
from benchmarks.report import threads_text  # noqa: E402
from core.provenance import code_version, cpu_text  # noqa: E402
from benchmarks.cli import add_user_dir_flag, device_with_threads, load_task_registry, prepare_process  # noqa: E402
from benchmarks.effects import fmt, interval_text, p_value_text  # noqa: E402
from benchmarks.significance import paired_bootstrap, seed_interval  # noqa: E402
from tasks.base import Task, load_checkpoint, load_tasks  # noqa: E402

SPLITS = ("valid", "test")
NICE = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # the y ticks of the plot


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


def markdown(task_cls, entries):
    m, better = task_cls.main_metric, "lower" if task_cls.lower_is_better else "higher"
    passes = sorted({k for e in entries for k in e["passes"]})
    lines = [f"# {task_cls.name} / MC-dropout evaluation against the number of passes", "",
             f"Test and validation {m} ({better} is better) of trained checkpoints: `standard` is the usual evaluation "
             "(dropout off; inverted dropout needs no weight scaling); `MC K` keeps dropout on and averages the "
             "probabilities of K passes at every position, each pass with its own masks (and its own recurrent state "
             "on stateful tasks), as Gal & Ghahramani (2016) evaluate. Every K of a row comes from one run of its "
             "largest K (the first K passes), seeded with the run's seed. `Δ` is the largest K minus standard, with the 95% "
             "interval and two-sided p of a paired bootstrap over the split's items (2,000 resamples; the test sample's "
             "noise for this one model, not the seed's). Whether "
             "MC evaluation helps is read off valid; test stands beside it and chooses nothing. One checkpoint per row; "
             "the difference over seeds, with its interval, is under \"Over seeds\" for schemes with two or more "
             "evaluated seeds (and, at one K, in the task's results table with `--mc-samples`). Produced by "
             "`python -m benchmarks.mc`.", "",
             "| checkpoint | scheme | p | seed | split | standard | " + " | ".join(f"MC {k}" for k in passes)
             + " | Δ | 95% CI | p |", "|" + "---|" * (len(passes) + 9)]
    for e in entries:
        for split in SPLITS:
            values = e["mc"][split]
            cells = [f"{values[str(k)][m]:.2f}" if str(k) in values else "—" for k in passes]
            delta = values[str(max(e["passes"]))][m] - e["standard"][split][m]
            boot = e.get("bootstrap", {}).get(split)
            interval = f"{interval_text(boot['boot_ci'])} | {p_value_text(boot['p'])}" if boot else "— | —"
            lines.append(f"| `{e['checkpoint']}` | {e['variant']} | {e['dropout']:g} | {e['seed']} | {split} | "
                         f"{e['standard'][split][m]:.2f} | " + " | ".join(cells) + f" | {delta:+.2f} | {interval} |")
    lines += over_seeds(task_cls, entries)
    lines += ["", "Runs:", ""]
    for e in entries:
        prov = e["provenance"]
        hw = prov.get("gpu") or f"{cpu_text(prov)}, {threads_text(prov['torch_threads'])}"
        lines.append(f"- `{e['checkpoint']}` ({e['label']}): `{prov['command']}` — "
                     f"{code_version(prov)}, {prov['device']} ({hw}), torch {prov['torch']}, "
                     f"{e['wall_s'] / 60:.1f} min, {e['finished']}")
    return "\n".join(lines + [""])


def over_seeds(task_cls, entries):
    """The "over seeds" section: for every scheme with two or more evaluated seeds, at the largest K they all
    reached, the mean MC-minus-standard difference with its 95% t interval over seeds, and the smallest K whose
    seed mean beats the standard's (where MC starts to pay)."""
    groups = {}
    for e in entries:
        groups.setdefault((e["label"], e["variant"], e["dropout"]), []).append(e)
    m, sign = task_cls.main_metric, -1 if task_cls.lower_is_better else 1
    rows = []
    for (label, variant, p), group in groups.items():
        if len({e["seed"] for e in group}) < 2:
            continue
        common = sorted(set.intersection(*(set(e["passes"]) for e in group)))
        for split in SPLITS:
            standard = [e["standard"][split][m] for e in group]
            mean_mc = {k: statistics.mean(e["mc"][split][str(k)][m] for e in group) for k in common}
            top = common[-1]
            diffs = [e["mc"][split][str(top)][m] - e["standard"][split][m] for e in group]
            pays = [k for k in common if sign * (mean_mc[k] - statistics.mean(standard)) > 0]
            rows.append(f"| {label} | {variant} | {p:g} | {','.join(str(e['seed']) for e in group)} | {split} | "
                        f"{fmt(standard)} | {top} | {fmt([e['mc'][split][str(top)][m] for e in group])} | "
                        f"{statistics.mean(diffs):+.2f} | {interval_text(seed_interval(diffs))} | "
                        f"{sum(sign * d > 0 for d in diffs)} / {len(diffs)} | {pays[0] if pays else '—'} |")
    if not rows:
        return []
    return ["", "## Over seeds", "",
            "Schemes with two or more evaluated seeds: at the largest K all of them reached, the seed means "
            "(± std), the mean difference MC minus standard with its 95% interval over seeds (Student's t over the "
            "per-seed differences), the seeds on which MC is better, and the smallest K at which the mean MC "
            "metric beats the mean standard one.", "",
            "| preset | scheme | p | seeds | split | standard | K | MC K | Δ | 95% CI over seeds | seeds MC better | "
            "MC better from K |", "|" + "---|" * 12] + rows


def plot(task_cls, entries, path):
    """MC minus standard against K, per split: below 0 MC pays (for a lower-is-better metric). One colour per
    scheme, one line style per seed."""
    m = task_cls.main_metric
    colors = {v: f"C{i % 10}" for i, v in enumerate(sorted({e["variant"] for e in entries}))}
    styles = ["-", "--", ":", "-."]
    late = [abs(e["mc"][split][k][m] - e["standard"][split][m]) for e in entries for split in SPLITS
            for k in e["mc"][split] if int(k) >= 10]
    linear = 1.5 * max(late + [0.05])  # the y axis is linear where the curves cross 0, logarithmic beyond
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(11, 4.2))
    for ax, split in zip(axes, SPLITS):
        for e in entries:
            ks = sorted(int(k) for k in e["mc"][split])
            ax.plot(ks, [e["mc"][split][str(k)][m] - e["standard"][split][m] for k in ks], "o",
                    linestyle=styles[(e["seed"] - 1) % len(styles)], color=colors[e["variant"]], markersize=3,
                    label=f"{e['variant']} p={e['dropout']:g} seed {e['seed']}")
        ax.axhline(0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=linear)
        ax.yaxis.set_major_locator(FixedLocator([0] + [s * v for v in NICE if v >= linear / 4 for s in (1, -1)]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+g}" if v else "0"))
        ax.set_xlabel("MC-dropout passes averaged (K)")
        ax.set_ylabel(f"{split} {m}: MC K minus standard")
        ax.set_title(f"{split}: MC dropout against the standard evaluation")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def record(out, task_cls, entry):
    """Merge `entry` into <out>/<task>/mc.json (replacing the same checkpoint on the same device) and redraw."""
    path = Path(out) / task_cls.name / "mc.json"
    same = lambda e: (e["checkpoint"], e["provenance"]["device"]) == (  # noqa: E731
        entry["checkpoint"], entry["provenance"]["device"])
    entries = sorted([e for e in read_json(path) if not same(e)] + [entry],
                     key=lambda e: (e["label"], e["variant"], e["seed"], e["checkpoint"]))
    write_json(path, entries)
    write_text(path.with_suffix(".md"), markdown(task_cls, entries))
    plot(task_cls, entries, path.with_suffix(".png"))
    return path


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
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="dataset root (default: $RNNREG_DATA_DIR)")
    parser.add_argument("--custom-data", action="store_true", help="as for benchmarks.run (your own copy of the data)")
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
