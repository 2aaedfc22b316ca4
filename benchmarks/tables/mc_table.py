"""The MC-dropout table: results/<task>/mc.{json,md,png}, every checkpoint benchmarks.mc evaluated, MC minus
standard against the number of passes, per seed and over seeds."""
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

from benchmarks.tables.format import fmt, interval_text, p_value_text  # noqa: E402
from benchmarks.tables.merge import read_json  # noqa: E402
from benchmarks.tables.significance import seed_interval  # noqa: E402
from benchmarks.tables.task_table import threads_text  # noqa: E402
from core.provenance import code_version, cpu_text  # noqa: E402
from core.utils import atomic_write, write_json, write_text  # noqa: E402

SPLITS = ("valid", "test")
NICE = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # the y ticks of the plot


def mc_markdown(task_cls, entries):
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
    write_text(path.with_suffix(".md"), mc_markdown(task_cls, entries))
    plot(task_cls, entries, path.with_suffix(".png"))
    return path
