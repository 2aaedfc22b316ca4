"""Write a task/preset's runs as results/<task>/<label>.{json,md,png}.

    python -m benchmarks.report results/lm/cpu.json   # re-render the .md and .png from recorded runs
"""
import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from core.utils import atomic_write, write_json, write_text  # noqa: E402


def load_runs(path):
    path = Path(path)
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or delete it") from None


def merge_runs(old, new):
    """Replace runs of the same (variant, dropout, seed), keep the others, order by variant then seed."""
    key = lambda r: (r["variant"], r["dropout"], r["seed"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return sorted(merged.values(), key=key)


def _group(runs):
    groups = defaultdict(list)
    for run in runs:
        groups[(run["variant"], run["dropout"])].append(run)
    return groups


def _fmt(values):
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _duration(seconds):
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def markdown(task, label, preset, runs):
    m = task.main_metric
    paper = task.paper_results.get(label, {})
    lines = [f"# {task.name} / {label}", "", task.description + ".", ""]
    if preset in task.preset_notes:
        lines += [f"**{task.preset_notes[preset]}**", ""]
    if label != preset:
        lines += [f"**Preset `{preset}` with overrides (`{label}`): not the preset as published.**", ""]
    direction = "lower" if task.lower_is_better else "higher"
    lines += [f"`{m}` is the metric ({direction} is better). All three columns come from the best-on-valid epoch; "
              f"train {m} is the running average over that epoch's training pass (dropout on, as in the paper's "
              f"code). The plot and the JSON have every epoch.", ""]
    header = ["variant", "p", f"train {m}", f"valid {m}", f"test {m}", "best epoch / epochs", "wall time",
              "seeds", f"paper valid {m}", f"paper test {m}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (variant, p), group in _group(runs).items():
        col = lambda name: [r["metrics"][name] for r in group if name in r["metrics"]]  # noqa: E731
        ref = paper.get(variant, {})
        lines.append("| " + " | ".join([
            variant, f"{p:g}", _fmt(col(f"train_{m}")), _fmt(col(f"valid_{m}")), _fmt(col(f"test_{m}")),
            ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in group),
            _duration(statistics.mean(r["wall_s"] for r in group)),
            ",".join(str(r["seed"]) for r in group),
            f"{ref[f'valid_{m}']:g}" if f"valid_{m}" in ref else "—",
            f"{ref[f'test_{m}']:g}" if f"test_{m}" in ref else "—",
        ]) + " |")
    config = runs[0]["config"]
    lines += ["", "Config: " + ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("scheme", "dropout", "seed")),
              "", "## Provenance", ""]
    for run in runs:
        prov = run["provenance"]
        hw = prov.get("gpu") or f"{prov['cpu_model']} ({prov['torch_threads']} threads)"
        lines.append(f"- {run['variant']} p={run['dropout']:g} seed {run['seed']}: commit {prov['git_commit'][:12]}, "
                     f"torch {prov['torch']}, {prov['device']}, {hw}, {_duration(run['wall_s'])} of training, "
                     f"finished {run['finished']}; `{prov['command']}`")
    return "\n".join(lines) + "\n"


def plot(task, label, runs, path):
    m = task.main_metric
    paper = task.paper_results.get(label, {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for (variant, p), group in _group(runs).items():
        for ax, split in zip(axes, ("train", "valid")):
            epochs = min(len(r["history"]) for r in group)
            ys = [statistics.mean(r["history"][e][f"{split}_{m}"] for r in group) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), ys, marker="o", markersize=3, label=f"{variant} (p={p:g})")
    for variant, ref in paper.items():
        if f"valid_{m}" in ref:
            axes[1].axhline(ref[f"valid_{m}"], color="gray", linestyle="--", label=f"paper, {variant}")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, split in zip(axes, ("train", "valid")):
        ax.set_title(f"{split} {m}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log" if task.lower_is_better else "linear")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel(m)
    fig.suptitle(f"{task.name} / {label}")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def write_results(out_dir, task, label, preset, new_runs):
    folder = Path(out_dir) / task.name
    runs = merge_runs(load_runs(folder / f"{label}.json"), new_runs)
    write_json(folder / f"{label}.json", runs)
    write_text(folder / f"{label}.md", markdown(task, label, preset, runs))
    plot(task, label, runs, folder / f"{label}.png")
    return runs


def main(argv=None):
    from tasks import get_task

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="results/<task>/<label>.json files written by benchmarks.run")
    for path in map(Path, parser.parse_args(argv).json):
        runs = load_runs(path)
        if not runs:
            parser.error(f"{path} has no runs")
        task, label = get_task(path.parent.name), path.stem
        preset = runs[0].get("preset", label.split("-")[0])
        write_text(path.with_suffix(".md"), markdown(task, label, preset, runs))
        plot(task, label, runs, path.with_suffix(".png"))
        print(f"rendered {path.with_suffix('.md')} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()


def write_overview(out_dir):
    pass
