"""Set two or more results side by side: results JSONs of one task (or run dirs), per variant and metric.

    python -m benchmarks.compare results/lm/cpu.json results/lm/cpu-bf16.json
    python -m benchmarks.compare results/speech/cpu.json runs/speech/cpu/zaremba-p0.3-seed1 --out cmp.md --plot cmp.png

The first input is the reference: every other one gets its difference to it (seed means), and where the runs
pair (the same seeds on the same test set, per-item statistics recorded) the 95% interval over seeds and the
paired bootstrap's interval and p (benchmarks.tables.significance). Runs of different test sets are never paired, and
runs of different machines (GPU or CPU model, torch major.minor) or code (source hash, else clean commit) only
with --across-machines, which marks them. With --run-dir, runs that wrote their test outputs (translations,
captions) also get the share of test items whose outputs are identical, beside the same share between the
reference's own seeds (two trainings that differ only in their seed: the yardstick). The output ends with the
command, its commit and each input's machines and commits.

    python -m benchmarks.compare results/mt/cpu.json results/mt/cpu-bf16-cpu.json --run-dir runs
"""
import argparse
import json
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.jobs.flags import add_user_dir_flag, load_task_registry
from benchmarks.tables.format import LOWER_IS_BETTER, fmt, interval_text, p_text, p_value_text, seeds_phrase
from benchmarks.tables.labels import OTHER_TABLES, SELECTION_SUFFIX
from benchmarks.tables.merge import config_gap, load_runs, variant_order
from benchmarks.tables.significance import paired_comparison
from benchmarks.tables.machines import seeds_by_machine
from benchmarks.jobs.config import run_name
from core.provenance import git_commit, machine_key, machine_name
from core.utils import atomic_write, write_text
from tasks.base import get_task

COMPARED = ("precision", "cuda_graphs")  # what two tables may differ in and still pair seed by seed
RUN_DIR = re.compile(r"^(?P<variant>[\w-]+?)-p(?P<p>[0-9.e-]+)-seed(?P<seed>-?\d+)$")


def load_source(path):
    """(task name, label, runs) of a results JSON (results/<task>/<label>.json) or a run dir
    (<run-dir>/<task>/<label>/<variant>-p<P>-seed<S>, its result.json)."""
    path = Path(path)
    if path.is_dir():
        match = RUN_DIR.match(path.name)
        if not match or not (path / "result.json").exists():
            raise ValueError(f"{path} is not a finished run dir (<variant>-p<P>-seed<S> with a result.json)")
        result = json.loads((path / "result.json").read_text())
        run = {**result, "variant": match["variant"], "dropout": float(match["p"]), "seed": int(match["seed"]),
               "config": {"dropout": float(match["p"])}}
        return path.parent.parent.name, f"{path.parent.name}/{path.name}", [run]
    if not path.exists():
        raise ValueError(f"{path} does not exist: give results/<task>/<label>.json files or run dirs")
    other = _other_table(path)
    if other:
        raise ValueError(f"{path} is {other}, not a results table: compare results/<task>/<label>.json files (the "
                         "tables of benchmarks.run and benchmarks.grid) or run dirs")
    runs = load_runs(path)
    if not isinstance(runs, list) or not runs or "metrics" not in runs[0]:
        raise ValueError(f"{path} is not a results table (a list of runs written by benchmarks.run)")
    return path.parent.name, path.stem, [r for r in runs if not r.get("ensemble")]


NOT_TABLES = {**OTHER_TABLES, "uncommitted": "the reasons kept for runs from uncommitted code"}


def _other_table(path):
    """What a JSON of results/ that is not a task table is ('a speed table (benchmarks.speed)'), or None."""
    if path.stem in NOT_TABLES:
        return NOT_TABLES[path.stem]
    if path.stem.endswith(SELECTION_SUFFIX):
        return "a selection table (benchmarks.select)"
    if path.stem.startswith("schemes"):
        return "the cross-task schemes table"
    return None


def _by_variant(sources):
    """({(variant, p): runs} per source, the (variant, p) of any source in the tables' order)."""
    groups = []
    for _, _, runs in sources:
        groups.append({})
        for run in runs:
            groups[-1].setdefault((run["variant"], p_text(run)), []).append(run)
    variants = sorted({v for g in groups for v in g}, key=lambda v: (variant_order(v[0]), v[1]))
    return groups, variants


def metrics_of(task):
    m = task.main_metric
    return [m] + [k for k, _ in task.extra_test_metrics[:1]]


def pairs(sources):
    """[(label, (variant, p), seed, reference's run, other's run)]: runs of the same variant, p and seed in the
    reference and another input."""
    groups, variants = _by_variant(sources)
    found = []
    for (_, label, _), group in zip(sources[1:], groups[1:]):
        for variant in variants:
            ref = {r["seed"]: r for r in groups[0].get(variant, [])}
            found += [(label, variant, run["seed"], ref[run["seed"]], run)
                      for run in group.get(variant, []) if run["seed"] in ref]
    return found


def code_of(prov):
    """The code a run ran: its source hash, else its clean commit; None where nothing names it (uncommitted code
    recorded without a source hash)."""
    commit = prov.get("git_commit") or ""
    return prov.get("source_hash") or (None if commit.endswith("-dirty") or not commit else commit)


def code_name(prov):
    commit = prov.get("git_commit") or "?"
    return f"commit {commit[:12]}" + ("-dirty" if commit.endswith("-dirty") else "")


def crossed_pairs(sources):
    """[(label, variant, p, seed, reference's setup, other's setup)] for every pair whose machines
    (core.provenance.machine_key) or code (code_of) differ, each setup named by what differs."""
    crossed = []
    for label, variant, seed, ref, run in pairs(sources):
        a, b = ref.get("provenance", {}), run.get("provenance", {})
        named = []
        if "torch" in a and "torch" in b and machine_key(a) != machine_key(b):  # both recorded
            named.append((machine_name(a), machine_name(b)))
        if "git_commit" in a and "git_commit" in b and (code_of(a) is None or code_of(a) != code_of(b)):
            unmatched = " (uncommitted code without a source hash: never matched)" * (code_of(a) is None)
            named.append((code_name(a) + unmatched, code_name(b)))
        gap = _gap(ref, run)
        if gap:
            named.append(tuple(", ".join(f"{k} {r.get('config', {}).get(k, '<unset>')}" for k in gap)
                               for r in (ref, run)))
        if named:
            crossed.append((label, *variant, seed, *("; ".join(side) for side in zip(*named))))
    return crossed


def output_agreement(task_name, sources, run_dir):
    """{(label, variant, p): (identical, items, seeds)} over the paired runs of results tables whose run dirs
    under `run_dir` both hold test outputs (<run-dir>/<task>/<label>/<run dir name>/test_outputs.txt)."""
    ref_label = sources[0][1]
    agreement = {}
    for label, variant, seed, ref, run in pairs(sources):
        texts = [_outputs(Path(run_dir) / task_name / side, entry) for side, entry in ((ref_label, ref), (label, run))]
        if None in texts or len(texts[0]) != len(texts[1]):
            continue
        same, total, seeds = agreement.get((label, *variant), (0, 0, ()))
        agreement[(label, *variant)] = (same + sum(a == b for a, b in zip(*texts)), total + len(texts[0]),
                                        seeds + (seed,))
    return agreement


def seed_agreement(task_name, source, run_dir):
    """{(variant, p): (identical, items, seed pairs)} between the reference's own seeds: what two trainings that
    differ only in their seed share, the yardstick for the agreement of the other inputs."""
    _, label, runs = source
    outputs = {}
    for run in runs:
        texts = _outputs(Path(run_dir) / task_name / label, run)
        if texts is not None:
            outputs.setdefault((run["variant"], p_text(run)), []).append((run["seed"], texts))
    found = {}
    for variant, seeds in outputs.items():
        for i, (seed_a, a) in enumerate(seeds):
            for seed_b, b in seeds[i + 1:]:
                if len(a) == len(b):
                    same, total, pairs_ = found.get(variant, (0, 0, ()))
                    found[variant] = (same + sum(x == y for x, y in zip(a, b)), total + len(a),
                                      pairs_ + (f"{seed_a}-{seed_b}",))
    return found


def _outputs(folder, run):
    file = folder / run_name(run["variant"], run["dropout"], run["seed"]) / "test_outputs.txt"
    return file.read_text().splitlines() if file.is_file() else None


def check_machines(sources, across_machines):
    """A ValueError naming every pair that changes machine as well as the compared factor, unless
    `across_machines`."""
    crossed = crossed_pairs(sources)
    if crossed and not across_machines:
        ref = sources[0][1]
        pairs = "; ".join(f"{variant} p={p} seed {seed}: `{ref}` on {a}, `{label}` on {b}"
                          for label, variant, p, seed, a, b in crossed)
        raise ValueError(f"these pairs differ in machine, code or config as well as in what is compared: {pairs}. "
                         "A config that differs (another model or test set) is never paired; otherwise re-run "
                         "one side on the other's machine from the other's commit (the same --seeds), or pass "
                         "--across-machines to pair them anyway (they are then marked)")


def comparison(task, sources, across_machines=False, agreement=None, yardstick=None):
    """Markdown lines: one table per metric, a row per variant, a column per source and per difference, and the
    test outputs' agreement (output_agreement) where given."""
    (_, ref_label, _), others = sources[0], sources[1:]
    groups, variants = _by_variant(sources)
    lines = [f"# {task.name}: " + " vs ".join(f"`{label}`" for _, label, _ in sources), "",
             f"Reference: `{ref_label}`. Cells: mean ± std over seeds (n), and the machines where a cell's seeds "
             "ran on more than one. Δ: the other minus the reference, seed means; where both have the same seeds on "
             "the same test set: the 95% interval over seeds (paired by seed) and the paired bootstrap's interval "
             "and p.", ""]
    crossed = crossed_pairs(sources)
    if crossed:
        lines += ["**Pairs across machines or code** (`--across-machines`: each also changes device, torch version "
                  "or code): "
                  + "; ".join(f"{variant} p={p} seed {seed} (`{ref_label}` on {a}, `{label}` on {b})"
                              for label, variant, p, seed, a, b in crossed) + ".", ""]
    for metric in metrics_of(task):
        for split in ("test", "valid"):
            key = f"{split}_{metric}"
            if not any(key in r["metrics"] for _, _, runs in sources for r in runs):
                continue
            header = ["variant", "p"] + [f"`{label}`" for _, label, _ in sources] + [
                f"Δ `{label}`" for _, label, _ in others]
            lines += [f"## {split} {metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for variant in variants:
                cells = []
                for g in groups:
                    runs = [r for r in g.get(variant, []) if key in r["metrics"]]
                    cells.append(f"{fmt([r['metrics'][key] for r in runs])} ({len(runs)}){_machines(runs)}"
                                 if runs else "—")
                for g in groups[1:]:
                    cells.append(_difference(groups[0].get(variant, []), g.get(variant, []), key, split, metric))
                lines.append(f"| {variant[0]} | {variant[1]} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines + (_agreement_lines(ref_label, others, variants, agreement, yardstick or {}) if agreement else [])


def _agreement_lines(ref_label, others, variants, agreement, yardstick):
    lines = [f"## identical test outputs (vs `{ref_label}`, paired seeds)", "",
             f"The last column is the yardstick: `{ref_label}`'s own seeds against each other, two trainings that "
             "differ only in their seed.", "",
             "| variant | p | " + " | ".join(f"`{label}`" for _, label, _ in others) + f" | `{ref_label}` seed vs seed |",
             "|" + "---|" * (3 + len(others))]
    for variant in variants:
        cells = [_agreement_text(agreement.get((label, *variant))) for _, label, _ in others]
        if any(cell != "—" for cell in cells):
            lines.append(f"| {variant[0]} | {variant[1]} | " + " | ".join(cells)
                         + f" | {_agreement_text(yardstick.get(variant))} |")
    return lines + [""]


def _check_inputs(args, task):
    """One input given twice, or a --run-dir that cannot add anything, is a flag error."""
    seen = [Path(p).resolve() for p in args.inputs]
    twice = sorted({str(p) for p in seen if seen.count(p) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} is given twice: compare a table with another one")
    if args.run_dir and not Path(args.run_dir).is_dir():
        raise ValueError(f"--run-dir {args.run_dir} is not a folder: give the --run-dir the runs were trained with")
    if args.run_dir and not task.decodes:
        raise ValueError(f"--run-dir: {task.name} writes no test outputs (only tasks that decode do: translations, "
                         "captions), so there is nothing to count; leave it out")


def provenance_lines(sources, argv):
    """Where the compared runs ran and from what code, per input, and the command that made the comparison."""
    lines = ["## Provenance", "",
             f"Made by `python -m benchmarks.compare {shlex.join(argv)}` from {code_name({'git_commit': git_commit()})}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The runs of each input:", ""]
    for _, label, runs in sources:
        provs = [r.get("provenance", {}) for r in runs]
        lines.append(f"- `{label}`: {len(runs)} runs on {_tally(machine_name(p) for p in provs)}; "
                     f"{_tally(code_name(p) for p in provs)}")
    return lines + [""]


def _tally(names):
    """'a (3), b (1)', or 'a' where all are one."""
    counts = Counter(names)
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{n} ({c})" for n, c in counts.items())


def _agreement_text(found):
    if found is None:
        return "—"
    same, total, seeds = found
    return f"{same:,} of {total:,} ({100 * same / total:.1f}%), seeds {','.join(map(str, seeds))}"


def _machines(runs):
    """'' for runs of one machine, else '; seeds 1 on ..., 2,3 on ...'."""
    by_machine = seeds_by_machine(runs)
    if len(by_machine) < 2:
        return ""
    return "; " + ", ".join(f"{seeds_phrase(seeds)} on {machine}" for machine, seeds in by_machine.items())


def _gap(a, b):
    """The config keys two runs differ in besides what is compared ([] where one side records no config: a run
    dir's result.json)."""
    recorded = lambda run: set(run.get("config", {})) - {"dropout", "scheme", "seed", "zoneout_cell"}  # noqa: E731
    return config_gap(a, b, COMPARED) if recorded(a) and recorded(b) else []


def _difference(ref, other, key, split, metric):
    a = [r["metrics"][key] for r in other if key in r["metrics"]]
    b = [r["metrics"][key] for r in ref if key in r["metrics"]]
    if not a or not b:
        return "—"
    text = f"{statistics.mean(a) - statistics.mean(b):+.2f}"
    gap = sorted({k for x in other for y in ref for k in _gap(y, x)})
    if gap:  # another model or another test set: never paired, whatever the flags
        return text + f" (not paired: the configs differ in {', '.join(gap)})"
    if split != "test":
        return text
    result = paired_comparison(other, ref, metric, metric in LOWER_IS_BETTER)
    if result is None:
        return text + " (no common seeds)"
    if len(result["seeds"]) < max(len(a), len(b)):
        text += f"; paired over seeds {','.join(map(str, result['seeds']))}: {result['diff']:+.2f}"
    if result.get("seed_ci"):
        text += f", seeds {interval_text(result['seed_ci'])}"
    if result.get("boot_ci"):
        text += f", bootstrap {interval_text(result['boot_ci'])} p {p_value_text(result['p'])}"
    return text


def plot(task, sources, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"test_{task.main_metric}"
    groups, variants = _by_variant(sources)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(variants) * len(sources) / 2, 3.6))
    width = 0.8 / len(sources)
    for i, g in enumerate(groups):
        for j, variant in enumerate(variants):
            values = [r["metrics"][key] for r in g.get(variant, []) if key in r["metrics"]]
            if values:
                ax.bar(j + i * width, statistics.mean(values), width, color=f"C{i}",
                       yerr=statistics.stdev(values) if len(values) > 1 else 0, capsize=2)
                ax.plot([j + i * width] * len(values), values, "k.", markersize=3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(sources))]
    ax.legend(handles, [label for _, label, _ in sources], fontsize=8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], [f"{v} p={p}" for v, p in variants],
                  rotation=30, ha="right")
    values = [r["metrics"][key] for _, _, runs in sources for r in runs if key in r["metrics"]]
    pad = (max(values) - min(values)) * 0.3 or 1.0
    ax.set_ylim(min(values) - pad, max(values) + pad)
    ax.set_ylabel(key)
    ax.set_title(f"{task.name}: {key} (mean ± std, dots: seeds)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="results/<task>/<label>.json files or run dirs (the first: reference)")
    parser.add_argument("--out", help="also write the comparison as Markdown here")
    parser.add_argument("--plot", help="also draw the test main metric per variant and input (PNG)")
    parser.add_argument("--across-machines", action="store_true", help="pair runs of the same seed even where their "
                        "machines or code differ (device, torch's major.minor version, source); the pairs are marked")
    parser.add_argument("--run-dir", help="the runs' --run-dir: also count the test outputs (translations, "
                                          "captions) that paired runs share, from their test_outputs.txt")
    add_user_dir_flag(parser)
    args = parser.parse_args(argv)
    if len(args.inputs) < 2:
        parser.error("give at least two inputs to compare")
    load_task_registry(args, parser)
    try:
        sources = [load_source(p) for p in args.inputs]
        names = sorted({name for name, _, _ in sources})
        if len(names) > 1:
            raise ValueError(f"the inputs belong to different tasks ({', '.join(names)}): compare one task at a time")
        task = get_task(names[0])
        _check_inputs(args, task)
        check_machines(sources, args.across_machines)
    except ValueError as err:
        parser.error(str(err))
    agreement = output_agreement(task.name, sources, args.run_dir) if args.run_dir else None
    yardstick = seed_agreement(task.name, sources[0], args.run_dir) if args.run_dir else None
    if args.run_dir and not agreement:
        print(f"note: no paired runs with test outputs under {args.run_dir}/{task.name}/", file=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    unread = [] if args.run_dir or not task.decodes else ["Identical test outputs not counted: add `--run-dir`, the "
                                                          "folder the runs trained in (their test_outputs.txt).", ""]
    text = "\n".join(comparison(task, sources, args.across_machines, agreement, yardstick) + unread
                     + provenance_lines(sources, argv))
    text += "\n"
    sys.stdout.write(text)
    if args.out:
        write_text(args.out, text)
    if args.plot:
        plot(task, sources, args.plot)


if __name__ == "__main__":
    main()
