"""results/schemes.{md,png}: every dropout scheme on every task, from each task's default (`cpu`) table.

Schemes down, tasks across; a cell is the held-out main metric of the best-on-valid epoch (mean ± std over
seeds) and its difference to `none` with the 95% interval over seeds (paired by seed), marked * when significant by
the rule of every table (benchmarks.tables.significance.verdict: the seed interval excludes 0 and the paired bootstrap's p,
Holm-adjusted over the family of that task's comparisons against `none` in this table, is below 0.05). Under the
table, a line per task names the best scheme and says whether its lead over the runner-up is significant (one
comparison: a family of one). Regenerated with results/README.md.
"""
import statistics
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.tables.effects import adjust_for_family  # noqa: E402
from benchmarks.tables.format import LOWER_IS_BETTER, counted, fmt, p_text
from benchmarks.tables.significance import paired_comparison, verdict  # noqa: E402
from benchmarks.tables.labels import P_BY_HAND, P_ON_VALIDATION, label_flags  # noqa: E402
from benchmarks.tables.machines import machine_count  # noqa: E402
from benchmarks.tables.merge import load_runs, neighbour_text, read_json  # noqa: E402
from benchmarks.tables.uncommitted import is_dirty  # noqa: E402
from core.utils import atomic_write, write_json, write_text  # noqa: E402


def _table_runs(out_dir, task, label=None):
    """The single-model runs of the task's table `label` (default: its default preset), or []."""
    path = Path(out_dir) / task.name / f"{label or task.default_preset}.json"
    if not path.exists():
        return []
    try:
        runs = load_runs(path)
    except ValueError as err:  # a damaged table is left out of the cross-task table, and said
        warnings.warn(f"left out of the cross-task table: {neighbour_text(err)}")
        return []
    return [r for r in runs if not r.get("ensemble")]


def _by_scheme(runs):
    """{row: runs}: a scheme's runs, split by p where the table holds it at several p ("gauss p=0.2"): runs of
    different p are never averaged."""
    by_p = {}
    for run in runs:
        by_p.setdefault(run["variant"], {}).setdefault(p_text(run), []).append(run)
    return {variant if len(ps) == 1 else f"{variant} p={p}": group
            for variant, ps in by_p.items() for p, group in ps.items()}


def _rows(groups_per_task):
    """Every row name of any task, the paper's order of the schemes first."""
    from core import SCHEMES

    names = {name for groups in groups_per_task for name in groups}
    order = list(SCHEMES)
    return sorted(names, key=lambda n: (order.index(n.split(" ")[0]) if n.split(" ")[0] in order else len(order), n))


def _against_none(groups, metric, lower):
    """{row: comparison with `none`} of one task's column, its significance Holm-adjusted over the column's family
    (every row compared with `none`), as each task's own table adjusts over its comparisons."""
    none = groups.get("none")
    if not none:
        return {}
    results = {name: paired_comparison(group, none, metric, lower) for name, group in groups.items() if group is not none}
    results = {name: result for name, result in results.items() if result}
    adjust_for_family([(name, "none", result) for name, result in results.items()])
    return results


def _cell(group, result, metric):
    key = f"test_{metric}"
    values = [r["metrics"][key] for r in group if key in r["metrics"]]
    if not values:
        return "—"
    text = f"{fmt(values)} (p={p_text(group[0])}, {len(values)} seed{'s' if len(values) > 1 else ''}{_unclean(group)})"
    if result:
        ci = result.get("seed_ci")
        text += f"; Δ none {result['diff']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        text += " *" if verdict(result) == "significant" else ""
    return text


def _unclean(group):
    """', 2 from uncommitted code, on 2 machines' where a scheme's seeds are not all clean runs of one machine."""
    dirty = sum(is_dirty(r) for r in group)
    machines = machine_count(group)
    return (f", {dirty} from uncommitted code" if dirty else "") + (f", on {machines} machines" if machines > 1 else "")


def _verdict(task_name, groups, metric, lower, shown):
    """The best scheme on validation (ranked by the mean valid metric of the best-on-valid epochs) and whether its
    lead over the validation runner-up holds on test: validation ranks, test only tests."""
    both = [f"valid_{metric}", f"test_{metric}"]
    valid = {v: statistics.mean(r["metrics"][both[0]] for r in g) for v, g in groups.items()
             if all(k in r["metrics"] for r in g for k in both)}
    if len(valid) < 2:
        return f"- {task_name}: fewer than two schemes have runs yet."
    ranked = sorted(valid, key=valid.get, reverse=not lower)
    best, second = ranked[:2]
    tied = [v for v in ranked if round(valid[v], 2) == round(valid[best], 2)]
    if len(tied) > 1:
        names = ", ".join(tied[:-1]) + f" and {tied[-1]}"
        return f"- {task_name}: no scheme ranks first on validation {metric}: {names} tie at {valid[best]:.2f}."
    test = {v: statistics.mean(r["metrics"][both[1]] for r in groups[v]) for v in (best, second)}
    result = paired_comparison(groups[best], groups[second], metric, lower)
    seeds = len(result["seeds"]) if result else 0
    ahead = (test[best] < test[second]) == lower
    said = verdict(result) if result else "no paired seeds"
    sure = ("and the lead holds significantly on test" if said == "significant" and ahead else
            "and on test it is ahead, **not significantly** (the lead could be noise)" if ahead and said ==
            "not significant" else f"and on test it is ahead, with no verdict ({said})" if ahead else
            "but on test it is **behind** it")
    missing = [s for s in shown if s not in valid]
    return (f"- {task_name}: **{best}** ranks first on validation {metric} ({valid[best]:.2f}, runner-up {second} "
            f"{valid[second]:.2f}), {sure}: test {test[best]:.2f} vs {test[second]:.2f}, over "
            f"{counted(seeds, 'paired seed')}."
            + (f" Not run yet on {task_name}, so not in the ranking: {', '.join(missing)}." if missing else ""))


def _columns(tasks, out_dir, label=None):
    """(name, task, single-model runs) of every task that has a table `label` (default: its default preset)."""
    columns = [(name, task, _table_runs(out_dir, task, label)) for name, task in sorted(tasks.items())]
    return [(name, task, runs) for name, task, runs in columns if runs]


def how_tuned(task, run):
    """How a run's p was set: "on validation", "by the preset", "by hand" or "by --dropout" (None for `none`). A p
    from the preset's `scheme_dropout` entry was chosen on validation (docs/schemes.md); runs from before the
    runner recorded `p_from` are read from their preset the same way."""
    recorded = run.get("p_from")
    if run["variant"] == "none" or recorded == "none":
        return None
    if recorded and recorded != "preset":
        return ("on validation" if recorded.startswith(P_ON_VALIDATION) else "by hand" if recorded == P_BY_HAND
                else "by --dropout")
    preset = task.presets.get(run.get("preset"), {})
    return "on validation" if run["variant"] in (preset.get("scheme_dropout") or {}) else "by the preset"


def tuning_lines(columns, selections=None, label=None, carried=""):
    """Per task: how each scheme's p was set and, where the schemes were not tuned alike, that a tuned scheme's lead
    over an untuned one may be its tuning; a p chosen at the edge of its grid, with the command that extends it
    (`carried`: the grid's own flags it repeats, such as --seeds, --data-dir, --out).
    `selections`: {task name: {scheme: the decision of its selection table}}."""
    lines = ["How each p was set (a scheme whose p was chosen on validation had a grid of tries the others did not: "
             "its lead over a scheme at a fixed p may be that tuning):", ""]
    for name, task, runs in columns:
        ways = {}
        for run in runs:
            way = how_tuned(task, run)
            if way:
                ways.setdefault(way, {}).setdefault(run["variant"], p_text(run))
        if not ways:
            continue
        said = "; ".join(f"{way}: " + ", ".join(f"{v} p={p}" for v, p in schemes.items())
                         for way, schemes in sorted(ways.items()))
        alike = (" (**not tuned alike**)" if len(ways) > 1 else " (tuned alike)" if "on validation" in ways
                 else " (set alike)")
        edges = [(v, d) for v, d in (selections or {}).get(name, {}).items()
                 if d.get("at_edge") and any(r["variant"] == v for r in runs)]
        flags = label_flags(label or task.default_preset)
        edge = "".join(f" {v} p={d['dropout']:g} is at the {_side(d)} edge of its grid (a p beyond may do better: "
                       f"`python -m benchmarks.grid --tasks {task.name} {flags} --variants {v} --select {v} "
                       f"--grid {v}={_beyond(d)}{carried}`)." for v, d in edges)
        moved = [(v, d) for v, d in (selections or {}).get(name, {}).items()
                 if any(r["variant"] == v and r["dropout"] != d["dropout"] for r in runs)]
        edge += "".join(f" **{v}'s runs are at p={', '.join(sorted({p_text(r) for r in runs if r['variant'] == v}))}"
                        f", but its selection table now chooses {d['dropout']:g}**: they are to be trained again at "
                        f"{d['dropout']:g}." for v, d in moved)
        lines.append(f"- {name}: {said}{alike}.{edge}")
    return lines + [""] if len(lines) > 2 else []


def _side(decision):
    return "low" if decision["dropout"] <= min(decision.get("points") or [decision["dropout"]]) else "high"


def _beyond(decision):
    """Grid points past a choice at the edge: halving below the lowest point, steps of 0.15 above the highest."""
    p, cell = decision["dropout"], decision.get("zoneout_cell")
    points = [p / 2, p / 4] if _side(decision) == "low" else [q for q in (p + 0.15, p + 0.3) if q < 0.95]
    return ",".join(f"{q:g}" + (f"/{cell:g}" if cell is not None else "") for q in points)


def schemes_markdown(columns, label=None, selections=None):
    which = (f"Each task's `{label}` table (results/<task>/{label}.json; where each p comes from: that table)"
             if label else
             "Each task's default preset, named in its column (`cpu`: scaled down for a 2-core CPU, not the paper's "
             "configurations; speech `cpu` is the TIMIT sample)")
    lines = [f"# Dropout schemes across tasks{f' ({label})' if label else ''}", "", *smoke_banner(columns, label),
             which + ", the test main metric of the best-on-valid epoch, "
             f"mean ± std over seeds{'' if label else ' (speech: region folds)'}, the scheme's "
             "p, and the difference to `none` with its 95% interval over seeds (paired by seed). * marks a "
             "significant difference by the one rule of every table: the interval excludes 0 and the paired "
             "bootstrap over test items has p < 0.05 after Holm's adjustment over the family of that task's "
             "comparisons against `none` here (its column; a task's own table adjusts over its larger family: "
             "against none and zaremba, every metric). A cell whose seeds include runs from uncommitted code or "
             "ran on more than one machine says so; its task table names them. "
             "A scheme run at several p has a row per p. Regenerated by "
             f"`python -m benchmarks.run` / `benchmarks.report` / `benchmarks.grid` from results/<task>/"
             f"{label or '<default preset>'}.json.", ""]
    if not columns:
        return "\n".join(lines + ["No task tables yet."]) + "\n"
    stale = {name for name, _, runs in columns if any(r.get("stale") for r in runs)}
    lines += ["| scheme | " + " | ".join(f"{name} ({label or task.default_preset}): test {task.main_metric} "
                                         f"({'lower' if task.main_metric in LOWER_IS_BETTER else 'higher'} is better)"
                                         + (" **stale: see its table**" if name in stale else "")
                                         for name, task, _ in columns) + " |",
              "|" + "---|" * (len(columns) + 1)]
    grouped = [(name, task, _by_scheme(runs)) for name, task, runs in columns]
    shown = _rows([groups for _, _, groups in grouped])  # a row where any task ran it
    against_none = [_against_none(groups, task.main_metric, task.main_metric in LOWER_IS_BETTER)
                    for _, task, groups in grouped]
    for scheme in shown:
        cells = []
        for (_, task, groups), results in zip(grouped, against_none):
            cells.append(_cell(groups[scheme], results.get(scheme), task.main_metric)
                         if scheme in groups else "not run yet")
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    lines += ["", *tuning_lines(columns, selections, label)]
    lines += ["Which scheme wins (ranked on validation, the lead then tested on test: test data never ranks):", ""]
    lines += [_verdict(name, groups, task.main_metric, task.main_metric in LOWER_IS_BETTER, shown)
              for name, task, groups in grouped]
    return "\n".join(lines) + "\n"


def schemes_plot(columns, path):
    from core import SCHEMES

    if not columns:
        return
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.6), squeeze=False)
    for ax, (name, task, runs) in zip(axes[0], columns):
        groups = _by_scheme(runs)
        key = f"test_{task.main_metric}"
        names = _rows([groups])
        values = [[r["metrics"][key] for r in groups[s] if key in r["metrics"]] for s in names]
        means = [statistics.mean(v) if v else float("nan") for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=[f"C{list(SCHEMES).index(s.split(' ')[0]) % 10}" if s.split(' ')[0] in SCHEMES
                                                   else "gray" for s in names])
        for i, v in enumerate(values):
            ax.plot([i] * len(v), v, "k.", markersize=3)
        low = min(min(v) for v in values if v)
        high = max(max(v) for v in values if v)
        pad = (high - low) * 0.3 or 1.0
        ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(f"{name}: test {task.main_metric}")
        ax.grid(True, axis="y", alpha=0.3)
    one_seed = all(len(group) == 1 for _, _, runs in columns for group in _by_scheme(runs).values())
    fig.suptitle("Dropout schemes (one seed each: a bar is that seed)" if one_seed else
                 "Dropout schemes (mean ± std over seeds, dots: seeds)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def schemes_data(columns):
    """The cross-task table as data: one record per task and row (results/schemes*.json beside the markdown)."""
    records = []
    for name, task, runs in columns:
        groups = _by_scheme(runs)
        results = _against_none(groups, task.main_metric, task.main_metric in LOWER_IS_BETTER)
        key = f"test_{task.main_metric}"
        for row, group in groups.items():
            scored = [r for r in group if key in r["metrics"]]
            values = [r["metrics"][key] for r in scored]
            result = results.get(row) or {}
            records.append({
                "task": name, "row": row, "variant": group[0]["variant"], "p": p_text(group[0]), "metric": key,
                "seeds": [r["seed"] for r in scored], "values": values,
                "mean": statistics.mean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "vs_none": None if not result else {
                    "diff": result["diff"], "seed_ci": result.get("seed_ci"), "bootstrap_ci": result.get("boot_ci"),
                    "p": result.get("p"), "p_holm": result.get("p_holm"), "verdict": verdict(result)}})
    return records


def smoke_banner(columns, label):
    """The banner of a cross-task table made from a smoke-test preset (tiny): not a result."""
    notes = {task.preset_notes.get(label or task.default_preset, "") for _, task, _ in columns}
    return ["**Smoke-test preset: not a result.**", ""] if any(n.startswith("Smoke") for n in notes) else []


def schemes_name(label=None):
    """results/schemes.md for the default presets; results/schemes-<label>.md for the tables of another label."""
    return "schemes" if label is None else f"schemes-{label}"


def selection_decisions(path):
    """{scheme: decision} of a selection table ({} where there is none or it cannot be read)."""
    try:
        table = read_json(path) if path.exists() else {}
        chosen, runs = table.get("chosen", {}), table.get("runs", [])
        return {v: {**d, "points": sorted({r["dropout"] for r in runs if r.get("variant") == v})}
                for v, d in chosen.items()}
    except (ValueError, AttributeError, KeyError, TypeError):
        return {}


def write_schemes(tasks, out_dir, label=None):
    """results/schemes.{md,png} from every task's default table, or schemes-<label>.{md,png} from its `label` table."""
    out_dir = Path(out_dir)
    columns = _columns(tasks, out_dir, label)  # each table read once, for both the table and the figure
    selections = {name: selection_decisions(out_dir / name / f"{label or task.default_preset}-selection.json")
                  for name, task, _ in columns}
    write_text(out_dir / f"{schemes_name(label)}.md", schemes_markdown(columns, label, selections))
    write_json(out_dir / f"{schemes_name(label)}.json", schemes_data(columns))
    schemes_plot(columns, out_dir / f"{schemes_name(label)}.png")
    return columns
