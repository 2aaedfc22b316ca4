"""A task table: a preset's runs as results/<task>/<label>.{json,md,png} (merged under the table's lock, rendered
as Markdown with effects and provenance, and plotted)."""
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from core.locks import table_lock  # noqa: E402
from core.provenance import code_version, cpu_text, fp32_math_text, machine_key  # noqa: E402
from benchmarks.tables.machines import mixed_machines_lines, seeds_text  # noqa: E402
from benchmarks.tables.labels import PRECISION_SUFFIXES, paper_label  # noqa: E402
from core.utils import atomic_write, write_json, write_text  # noqa: E402
from benchmarks.tables.effects import effect_metrics, effects_section, mc_dropout_line  # noqa: E402
from benchmarks.tables.format import counted, fmt as _fmt, p_text  # noqa: E402
from benchmarks.tables.significance import seed_interval  # noqa: E402
from benchmarks.tables.uncommitted import dirty_rows_lines, is_dirty, reasons_for, uncommitted_lines  # noqa: E402
from benchmarks.tables.merge import check_consistent, load_runs, merge_log, singles, variant_order  # noqa: E402
from tasks.base import first_seed_details  # noqa: E402


def _ensembles(runs):
    return [run for run in runs if run.get("ensemble")]


def group_runs(runs):
    """{(variant, p): single-model runs}, none and zaremba first; see _ensembles for the others."""
    groups = defaultdict(list)
    for run in sorted(singles(runs), key=lambda r: (variant_order(r["variant"]), r["dropout"], r["seed"] or 0)):
        groups[(run["variant"], run["dropout"])].append(run)
    return groups


def device_of(run):
    """'cpu', or the GPU's name: what a wall time was measured on."""
    prov = run.get("provenance", {})
    return prov.get("gpu") or str(prov.get("device", "?")).split(":")[0]


def _wall_times(group):
    """Mean wall time per device, labelled: '9.8 min (cpu)', or '1.3 min (NVIDIA H200) / 67.0 min (cpu)'."""
    by_device = defaultdict(list)
    for run in group:
        by_device[device_of(run)].append(run["wall_s"])
    return " / ".join(f"{_duration(statistics.mean(v))} ({d})" for d, v in sorted(by_device.items()))


def summary(task, runs):
    """The compact table at the top: per variant the held-out headline metrics, mean [95% interval over seeds]."""
    m = task.main_metric
    keys = [(f"test_{m}", f"test {m}"), (f"valid_{m}", f"valid {m}")]
    keys += [(f"train_{m}", f"train {m} (eval mode)")] if task.eval_train else []  # the paper's Table 2 pair
    keys += [(f"test_{k}", f"test {name}") for k, name in task.extra_test_metrics[:1]]
    keys += [(f"test_{k}", f"test {k}") for k in task.split_metrics[:1]]
    lines = ["## Summary", "", "| variant | p | " + " | ".join(name for _, name in keys) + " | seeds | machine |",
             "|" + "---|" * (len(keys) + 4)]
    clipped = set()
    for (variant, _), group in group_runs(runs).items():
        cells = []
        for key, _ in keys:
            values = [r["metrics"][key] for r in group if key in r["metrics"]]
            if len(values) > 1:
                bound = task.bounded_metrics.get(key.split("_", 1)[1])
                low, high = seed_interval(values, bound)
                clipped |= {key} if (low, high) != seed_interval(values) else set()
                cells.append(f"{statistics.mean(values):.2f} [{low:.2f}, {high:.2f}]")
            else:
                cells.append(_fmt(values))
        devices = ", ".join(sorted({machine_key(r.get("provenance", {}))[0] for r in group}))
        lines.append(f"| {variant} | {p_text(group[0])} | " + " | ".join(cells) + f" | {len(group)} | {devices} |")
    cut = (", clipped to the metric's range where it ran past it: " + ", ".join(name for key, name in keys
                                                                             if key in clipped)) if clipped else ""
    return lines + ["", f"Mean over seeds [95% t interval of the mean{cut}]; the full table, the paired tests and the "
                        "provenance follow.", ""]


P_NOT_RECORDED = "not recorded (older runs)"


def _p_sources(runs):
    """One line saying where each variant's p came from (the preset, --p by hand, or validation)."""
    sources = {}
    for run in singles(runs):
        if run["variant"] != "none" and run.get("p_from") != "none":
            sources.setdefault((run["variant"], p_text(run)), set()).add(run.get("p_from") or P_NOT_RECORDED)
    if not any(s != {P_NOT_RECORDED} for s in sources.values()):
        return []
    return ["Where each p comes from: " + "; ".join(f"{v} p={p}: {', '.join(sorted(s))}"
                                                    for (v, p), s in sources.items()) + ".", ""]


def _duration(seconds):
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _paper_keys(task):
    """The paper's metric keys for this task, in a fixed order (the same columns for every preset)."""
    keys = {k for variants in task.paper_results.values() for ref in variants.values() for k in ref}
    m = task.main_metric
    order = [f"train_{m}", f"valid_{m}", f"test_{m}"] + [f"test_{k}" for k, _ in task.extra_test_metrics]
    return [k for k in order if k in keys]




def _label(key, task):
    names = dict(task.extra_test_metrics)
    split, metric = key.split("_", 1)
    return f"{split} {names.get(metric, metric)}"


def task_markdown(task, label, preset, runs, uncommitted=None):
    """The task table; `uncommitted`: {commit: why} of its runs from uncommitted code (benchmarks.tables.uncommitted)."""
    m = task.main_metric
    paper = task.paper_results.get(paper_label(label), {})
    lines = [f"# {task.name} / {label}", "", task.description + ".", ""]
    if preset in task.preset_notes:
        lines += [f"**{task.preset_notes[preset]}**", ""]
    if label.removeprefix(preset) in PRECISION_SUFFIXES:
        how = PRECISION_SUFFIXES[label.removeprefix(preset)]
        lines += [f"**Preset `{preset}` with {how} (`{label}`); otherwise the preset's config.**", ""]
    elif label != preset:
        lines += [f"**Preset `{preset}` with overrides (`{label}`): not the preset as published.**", ""]
    stale = sorted({r["stale"] for r in runs if r.get("stale")})
    if stale:
        lines += [f"**Stale: {reason}**" for reason in stale] + [""]
    custom = sorted({f for r in runs for f in r.get("data", {}).get("noncanonical_files", [])})
    if custom:
        lines += [f"**Trained on non-canonical data (--custom-data): {', '.join(custom)} differ from the "
                  f"published files, so these numbers are not comparable with published ones.**", ""]
    direction = "lower" if task.lower_is_better else "higher"
    train_how = (f"the training set measured again in eval mode (dropout off) after the epoch, as in the paper; "
                 f"the JSON also has the running average over the training pass as train_running_{m}"
                 if task.eval_train else
                 "the running average over that epoch's training pass (dropout on, as in the paper's code)")
    lines += summary(task, runs) if singles(runs) else []
    groups = group_runs(runs)
    lines += mixed_machines_lines(groups) + dirty_rows_lines(groups)
    lines += _p_sources(runs)
    lines += ["## Details", "", f"`{m}` is the metric ({direction} is better). All columns come from the best-on-valid "
              f"epoch; train {m} is {train_how}. Wall time: training, per device. The plot and the JSON have every "
              "epoch.", ""]
    split_keys = [f"{split}_{metric}" for metric in (m, *task.split_metrics) for split in ("train", "valid", "test")]
    names = dict(task.extra_test_metrics)
    # decoding metrics on validation (reported, never used to choose anything) before the test ones
    extras = [(f"valid_{k}", f"valid {names[k]}") for k in effect_metrics(task, runs)[1:]
              if any(f"valid_{k}" in r["metrics"] for r in runs)]
    extras += [(f"test_{k}", f"test {name}") for k, name in task.extra_test_metrics]
    paper_keys = _paper_keys(task)
    header = (["variant", "p"] + [k.replace("_", " ", 1) for k in split_keys] + [name for _, name in extras]
              + ["best epoch / epochs", "wall time", "seeds"]
              + [f"paper {_label(k, task)}" for k in paper_keys])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (variant, p), group in groups.items():
        col = lambda name: [r["metrics"][name] for r in group if name in r["metrics"]]  # noqa: E731
        ref = paper.get(variant, {})
        lines.append("| " + " | ".join(
            [variant, p_text(group[0])] + [_fmt(col(key)) for key in split_keys]
            + [_fmt(col(key)) for key, _ in extras]
            + [", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in group),
               _wall_times(group),
               seeds_text(group)]
            + [f"{ref[k]:g}" if k in ref else "—" for k in paper_keys]) + " |")
    for run in _ensembles(runs):
        ref = paper.get(f"{run['variant']} ensemble", {})
        value = lambda key: _fmt([run["metrics"][key]] if key in run["metrics"] else [])  # noqa: E731
        lines.append("| " + " | ".join(
            [f"{run['variant']} (ensemble of {len(run['ensemble'])})", f"{run['dropout']:g}"]
            + [value(key) for key in split_keys] + [value(key) for key, _ in extras]
            + ["— (the members' best checkpoints)", _duration(run["wall_s"]) + " (evaluation)",
               ",".join(map(str, run["ensemble"]))]
            + [f"{ref[k]:g}" if k in ref else "—" for k in paper_keys]) + " |")
    if _ensembles(runs):
        lines += ["", "Ensemble rows average their members' next-token (frame) probabilities at every position "
                      "(and, where the task decodes, at every beam-search step); they have no training metrics."]
    last = [f"{variant} (p={p:g}) train {m} {_fmt([r['history'][-1][f'train_{m}'] for r in group])}, valid {m} "
            f"{_fmt([r['history'][-1][f'valid_{m}'] for r in group])}" for (variant, p), group in groups.items()]
    lines += ["", "At the last epoch, for comparison with the best-on-valid columns: " + "; ".join(last) + "."]
    lines += mc_dropout_line(task, groups)
    if paper:
        caveat = (" They come from the paper's own configuration, not this one: compare the direction and size "
                  "of the dropout effect, not the values." if preset in task.preset_notes else "")
        lines += ["", f"Paper columns: {task.paper_source} of Zaremba et al. (2014), as printed.{caveat}"]
    if task.published_anchors.get(preset):
        lines += ["", "Published anchors (other papers' test numbers for this configuration, as printed; not our "
                      "runs): " + " ".join(task.published_anchors[preset])]
    if task.results_notes:
        lines += ["", task.results_notes]
    lines += decoding_speed(runs)
    signatures = sorted({r["details"]["bleu_signature"] for r in runs if "bleu_signature" in r.get("details", {})})
    if signatures:
        lines += ["", "sacreBLEU signature: " + "; ".join(f"`{s}`" for s in signatures)]
    config = runs[0]["config"]
    lines += ["", "Config: " + ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("scheme", "dropout", "seed"))]
    lines += effects_section(task, runs, groups)
    lines += _examples(runs)
    lines += ["", "## Provenance", ""]
    commits = sorted({code_version(r["provenance"]) for r in runs})
    if len(commits) > 1:
        lines += [f"The runs come from {len(commits)} code versions ({', '.join(commits)}); their configs are identical "
                  "apart from variant, p and seed (checked when they were merged).", ""]
    if any(is_dirty(run) for run in runs):
        lines += [f"- {line}" for line in uncommitted_lines(runs, uncommitted or {})] + [""]
    for run in runs:
        prov = run["provenance"]
        if run.get("ensemble"):
            who, spent = f"ensemble of seeds {','.join(map(str, run['ensemble']))}", "evaluation"
        else:
            who, spent = f"seed {run['seed']}", "training"
        hw = prov.get("gpu") or f"{cpu_text(prov)} ({threads_text(prov['torch_threads'])})"  # bf16 flags too
        if prov.get("world_size", 1) > 1:
            hw += f" x {prov['world_size']} processes (torchrun, DDP)"
        lines.append(f"- {run['variant']} p={p_text(run)} {who}: {code_version(prov)}, "
                     f"torch {prov['torch']}{fp32_math_text(prov)}, {prov['device']}, {hw}, {_duration(run['wall_s'])} of {spent}, "
                     f"finished {run['finished']}; `{prov['command']}`" + _mc_origin(run))
    return "\n".join(lines) + "\n"


def threads_text(n):
    return counted(n, "thread")


def _mc_origin(run):
    mc = run.get("mc", {}).get("provenance")
    return f"; MC-dropout evaluation: {code_version(mc)}, `{mc['command']}`" if mc else ""


SPEED_KEYS = {"decode_sent_s": "sentences/s", "decode_image_s": "images/s"}


def decoding_speed(runs):
    """One line: each variant's test decoding speed (mean over its seeds), per device, beam width and threads
    (seeds of one row may come from different machines, whose speeds must not be averaged)."""
    speeds = defaultdict(lambda: defaultdict(list))
    for run in singles(runs):
        details = run.get("details", {})
        for key, unit in SPEED_KEYS.items():
            if key in details and details.get("threads"):
                beam = details.get("decode", {}).get("beam")
                where = f"beam {beam}, {threads_text(details['threads'])} on {run['provenance']['device']}"
                speeds[where][(run["variant"], run["dropout"], unit)].append(details[key])
    if not speeds:
        return []
    groups = [", ".join(f"{v} p={p:g} {statistics.mean(x):.1f} {unit}" for (v, p, unit), x in row.items())
              + f" ({where})" for where, row in sorted(speeds.items())]
    return ["", "Test decoding speed (beam search alone, mean over seeds): " + "; ".join(groups) + "."]


def _examples(runs):
    """Example test outputs side by side (the first seed of each variant)."""
    firsts = {k: details["examples"] for k, details in first_seed_details(runs, "examples").items()}
    if not firsts:
        return []
    lines = ["", "## Example test outputs", ""]
    base = next(iter(firsts.values()))
    for i, example in enumerate(base):
        where = example.get("label") or f"test sentence {example['index']}"
        lines += [f"{i + 1}. ({where})", f"   - source: {example['source']}",
                  f"   - reference: {example['reference']}"]
        for (variant, p), examples in firsts.items():
            if i < len(examples):
                lines.append(f"   - {variant} (p={p:g}): {examples[i]['output']}")
    return lines


def plot(task, label, runs, path):
    m = task.main_metric
    paper = task.paper_results.get(paper_label(label), {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for (variant, p), group in group_runs(runs).items():
        for ax, split in zip(axes, ("train", "valid")):
            epochs = min(len(r["history"]) for r in group)
            ys = [statistics.mean(r["history"][e][f"{split}_{m}"] for r in group) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), ys, marker="o", markersize=3, label=f"{variant} (p={p:g})")
    for (variant, ref), style in zip(paper.items(), ("--", ":", "-.")):
        for ax, split in zip(axes, ("train", "valid")):
            if f"{split}_{m}" in ref:
                ax.axhline(ref[f"{split}_{m}"], color="gray", linestyle=style, label=f"paper, {variant}")
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


def write_results(out_dir, task, label, preset, new_runs, sources=None, refuse=True):
    """Merge `new_runs` into results/<task>/<label>.json (see benchmarks/tables/merge.py), print what was replaced, and
    render the table and plots. A run that clashes with the table (same key, other config) raises a ValueError,
    or with `refuse=False` is left out. Returns the merge log."""
    folder = Path(out_dir) / task.name
    table = folder / f"{label}.json"
    with table_lock(table):  # read, merge and write as one step: a run landing at the same moment waits
        runs, log = merge_log(load_runs(table), new_runs, str(table), sources)
        if log["refused"] and refuse:
            raise ValueError("refused (nothing written): " + "; ".join(log["refused"]))
        check_consistent(runs, table)
        for line in log["replaced"]:
            print(f"replaced in {table}: {line}")
        write_json(table, runs)
        reasons = reasons_for(table)
        write_text(folder / f"{label}.md", task_markdown(task, label, preset, runs, reasons))
        plot(task, label, runs, folder / f"{label}.png")
        task.figures(runs, folder, label)
    return log
