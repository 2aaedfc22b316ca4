"""The "Is the difference real?" section of a results table: every variant against the baselines (none and
zaremba), the difference of the seed means with its 95% interval over seeds and the paired bootstrap over test
items (benchmarks.tables.significance), and a line in plain words per comparison."""
import statistics

from benchmarks.tables.format import LOWER_IS_BETTER, fmt, interval_text, p_text, p_value_text, seeds_phrase
from benchmarks.tables.significance import METRICS, paired_comparison, holm, seed_interval, verdict
from core.provenance import machine_key

BASELINES = ("none", "zaremba")  # every other variant is compared with these


def effect_metrics(task, runs):
    """The metrics compared: the main one, the first extra one, and every extra one with per-item statistics."""
    with_items = {k for r in runs for k in r.get("details", {}).get("items", {})}
    keys = [task.main_metric] + [k for k, _ in task.extra_test_metrics[:1]]
    keys += [k for k, _ in task.extra_test_metrics if k in METRICS and METRICS[k][0] in with_items and k not in keys]
    return keys


def crossed_seeds(group, base_group):
    """The seeds whose two runs (one per group) ran on different machines (device or torch major.minor)."""
    base = {r["seed"]: machine_key(r.get("provenance", {})) for r in base_group}
    return {r["seed"] for r in group if r["seed"] in base and machine_key(r.get("provenance", {})) != base[r["seed"]]}


def effects(task, runs, groups):
    """[(a, b, comparison dict)] for each variant against each baseline present (see benchmarks.tables.significance);
    `groups`: {(variant, p): single-model runs}."""
    out = []
    for base_variant in BASELINES:
        bases = [(key, group) for key, group in groups.items() if key[0] == base_variant]
        for (variant, p), group in groups.items():
            for base_key, base_group in bases:
                if variant == base_variant or (base_variant == "zaremba" and variant == "none"):
                    continue
                for metric in effect_metrics(task, runs):
                    result = paired_comparison(group, base_group, metric, metric in LOWER_IS_BETTER)
                    if result:
                        out.append(((variant, p), base_key, result))
    return out


def adjust_for_family(rows):
    """Holm-adjust the bootstrap p of every row that has one (the family: the rows given), and make "significant"
    require the adjusted p < 0.05."""
    tested = [r for _, _, r in rows if r.get("boot_ci") is not None]
    for r, adjusted in zip(tested, holm([r["p"] for r in tested])):
        r["p_holm"] = adjusted
        r["significant"] = r["seeds_agree"] and adjusted < 0.05  # the rows without a bootstrap stay False
    return len(tested)


def effects_section(task, runs, groups):
    """The table's "Is the difference real?" section: one row per comparison, then a line in plain words each."""
    rows = effects(task, runs, groups)
    if not rows:
        return []
    family = adjust_for_family(rows)
    names = dict(task.extra_test_metrics)
    lines = ["", "## Is the difference real? (test set)", "",
             "Difference of the seed means (first variant minus second). 95% CI over seeds: Student's t over the "
             "per-seed differences (seeds paired by number). Paired bootstrap: 2,000 resamples of the test items "
             "(sentences, images, utterances or bptt chunks), the same draw for both variants of a seed (and for all "
             "seeds that share a test set); its 95% percentile interval and two-sided p. Holm p: the bootstrap p "
             f"adjusted (Holm 1979) over the family of the {family} comparisons of this table (every variant against "
             "none and zaremba, every metric). Significant here means Holm p < 0.05 *and* the seed interval "
             "excludes 0 (both sources of noise: the test sample and the training seed); with one seed, or "
             "without per-item statistics (no bootstrap), there is no verdict.", "",
             "| comparison | metric | seeds | difference | 95% CI over seeds | paired bootstrap 95% CI | p | Holm p | "
             "seeds better / worse | verdict |",
             "|" + "---|" * 10]
    said, crossing = [], False
    for (variant, p), (base, base_p), r in rows:
        crossed = crossed_seeds(groups[(variant, p)], groups[(base, base_p)])
        crossing |= bool(crossed)
        seed_ci = r.get("seed_ci")
        boot_ci = r.get("boot_ci")
        how = f" (bootstrap over {seeds_phrase(r['boot_seeds'])}: the others have no per-item statistics)" \
            if r.get("boot_seeds") else ""
        p_value = "—" if boot_ci is None else p_value_text(r["p"])
        p_holm = "—" if boot_ci is None else p_value_text(r["p_holm"])
        said_verdict = {"one seed": "— (one seed)", "no per-item statistics": "— (no per-item statistics)"}.get(
            verdict(r), verdict(r))
        rate, base_rate = p_text(groups[(variant, p)][0]), p_text(groups[(base, base_p)][0])
        lines.append(f"| {variant} p={rate} − {base} p={base_rate} | test {names.get(r['metric'], r['metric'])} | "
                     f"{','.join(f'{s}†' if s in crossed else str(s) for s in r['seeds'])} | {r['diff']:+.2f} | "
                     f"{interval_text(seed_ci) if seed_ci else '— (one seed)'} | {interval_text(boot_ci) if boot_ci else '—'} | "
                     f"{p_value} | {p_holm} | {r['a_better']} / {r['b_better']} | {said_verdict}{how} |")
        said.append(_in_words(f"{variant} p={rate}", f"{base}", names.get(r["metric"], r["metric"]), r))
    crossing_note = ["", "† the seed's two runs ran on different machines (device or torch version): its "
                         "difference also holds the machines' difference, which moves a run by as much as the "
                         "spread over seeds, or more."] if crossing else []
    return lines + crossing_note + [""] + said


def mc_dropout_line(task, groups):
    """One line for runs evaluated with `--mc-samples`: each variant's test metric with MC dropout against its
    standard (expectation) evaluation of the same checkpoints, and the mean per-seed difference with its t interval."""
    m, said, samples = task.main_metric, [], set()
    for (variant, _), group in groups.items():
        runs = [r for r in group if f"test_mc_{m}" in r["metrics"]]
        if not runs:
            continue
        samples |= {r["mc"]["samples"] for r in runs}
        diffs = [r["metrics"][f"test_mc_{m}"] - r["metrics"][f"test_{m}"] for r in runs]
        mean = statistics.mean(diffs)
        spread = f", 95% CI {interval_text(seed_interval(diffs))}" if len(diffs) > 1 else "; one seed: no interval"
        values = lambda key: fmt([r["metrics"][key] for r in runs])  # noqa: E731
        said.append(f"{variant} p={p_text(runs[0])} {values(f'test_mc_{m}')} vs {values(f'test_{m}')} "
                    f"({seeds_phrase([r['seed'] for r in runs])}; difference {mean:+.2f}{spread})")
    if not said:
        return []
    return ["", f"MC-dropout evaluation (Gal & Ghahramani 2016: the best-on-valid checkpoint with its dropout on, the "
                f"probabilities of {'/'.join(map(str, sorted(samples)))} passes averaged; `--mc-samples`), test {m} "
                f"against the standard evaluation of the same checkpoints: " + "; ".join(said) + "."]


def _in_words(a, b, metric, r):
    lower = r["metric"] in LOWER_IS_BETTER
    better = (r["diff"] < 0) == lower
    direction = "better" if better else "worse"
    why = []
    if r.get("boot_ci") is not None:
        over = f" ({seeds_phrase(r['boot_seeds'])})" if r.get("boot_seeds") else ""
        holm_text = f", Holm-adjusted {p_value_text(r['p_holm'])}" if "p_holm" in r else ""
        why.append(f"paired bootstrap{over} p {'= ' if r['p'] > 0.001 else ''}{p_value_text(r['p'])}{holm_text}")
    if r.get("seed_ci") is None:
        why.append("one seed only: no interval over seeds")
    elif not r["seeds_agree"]:
        why.append("the interval over seeds includes 0")
    why.append(f"{r['a_better']} of {len(r['seeds'])} seeds better")
    said = {"one seed": "no verdict on one seed", "significant": "a significant difference",
            "no per-item statistics": "no verdict (no per-item statistics, so no paired bootstrap)",
            "not significant": "**not a significant difference** (it could be noise)"}[verdict(r)]
    how = "equal on average" if r["diff"] == 0 else f"{abs(r['diff']):.2f} {direction} on average"
    return f"- {a} vs {b}, test {metric}: {a} is {how}; {said}: {'; '.join(why)}."
