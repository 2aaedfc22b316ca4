"""Runs from uncommitted code: a `-dirty` commit names code that cannot be checked out again, so every such run in
a results folder needs a reason, kept in `<out>/uncommitted.json` as {"<task>/<table>.json": {"<commit>": why}}.
The task tables print the reason beside the runs it covers; tests/test_results_provenance.py fails while a run in
the repository's results/ has none (benchmarks.run warns before training from a dirty tree into it)."""
import json
import warnings
from pathlib import Path

from benchmarks.tables.format import p_text, seeds_phrase
from core.provenance import ROOT

REGISTRY = "uncommitted.json"


def is_dirty(record):
    """Whether a run (or a speed entry) was made from uncommitted code."""
    return str(record.get("provenance", {}).get("git_commit", "")).endswith("-dirty")


def reasons_for(table):
    """{commit: why} of one table (<results>/<task>/[<folder>/]<name>.json) from the uncommitted.json of its
    results folder: the nearest folder above it that holds one ({} where none does)."""
    table = Path(table).resolve()
    for folder in table.parents:
        if (folder / REGISTRY).is_file():
            return load_reasons(folder).get(table.relative_to(folder).as_posix(), {})
    return {}


def load_reasons(out_dir):
    """{table key: {commit: why}} from `<out_dir>/uncommitted.json` ({} when there is none)."""
    path = Path(out_dir) / REGISTRY
    if not path.is_file():
        return {}
    try:
        reasons = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is damaged ({err}): fix its JSON, or restore it with `git checkout {path}`")
    if not isinstance(reasons, dict) or not all(isinstance(v, dict) for v in reasons.values()):
        raise ValueError(f"{path} must map '<task>/<table>.json' to {{commit: reason}}")
    return reasons


def records(table):
    """The runs (or speed entries) of a table JSON: a list, or a selection table's {"runs": [...]}."""
    data = json.loads(Path(table).read_text())
    data = data.get("runs", []) if isinstance(data, dict) else data
    return [r for r in data if isinstance(r, dict)]


def undeclared(out_dir):
    """[(table key, commit, what)] for every run from uncommitted code under `out_dir` without a reason."""
    out_dir, reasons, missing = Path(out_dir), load_reasons(out_dir), []
    for table in sorted(out_dir.rglob("*.json")):
        if table.name == REGISTRY:
            continue
        key = str(table.relative_to(out_dir).with_suffix(".json").as_posix())
        for record in records(table):
            commit = record.get("provenance", {}).get("git_commit", "")
            if is_dirty(record) and not reasons.get(key, {}).get(commit):
                what = f"{record['variant']} seed {record.get('seed')}" if "variant" in record else \
                    f"speed entry {record.get('preset')}"
                missing.append((key, commit, what))
    return missing


def dirty_rows_lines(groups):
    """A warning under the summary for rows with runs from uncommitted code (the why is under Provenance)."""
    dirty = [f"{variant} p={p_text(group[0])}: " + seeds_phrase([r["seed"] for r in group if is_dirty(r)])
             for (variant, _), group in groups.items() if any(is_dirty(r) for r in group)]
    if not dirty:
        return []
    return ["**Rows with runs from uncommitted code** (they cannot be checked out again; why each was kept is under "
            "Provenance): " + "; ".join(dirty) + ".", ""]


def uncommitted_lines(runs, reasons):
    """The table's note on its runs (or speed entries) from uncommitted code: a sentence per commit, with its
    reason."""
    by_commit = {}
    for run in runs:
        if is_dirty(run):
            by_commit.setdefault(run["provenance"]["git_commit"], []).append(run)
    lines = []
    for commit, group in sorted(by_commit.items()):
        who = ", ".join(f"{r['variant']} p={p_text(r)} seed {r.get('seed')}" for r in group if "variant" in r) \
            or "this section"
        why = reasons.get(commit, "no reason recorded in results/uncommitted.json")
        lines.append(f"**From uncommitted code** ({commit[:12]}-dirty: it cannot be checked out again): {who}. "
                     f"Why: {why}")
    return lines


def warn_if_uncommitted(origin, out):
    """Before training: a run from uncommitted code into the repository's own results/ cannot be checked out again
    (tests/test_results_provenance.py refuses it there until its table says why)."""
    if origin["git_commit"].endswith("-dirty") and Path(out).resolve() == ROOT / "results":
        warnings.warn(f"the working tree has uncommitted changes to the code ({origin['git_commit'][:12]}-dirty) and "
                      f"--out is the repository's results/: commit first (or train from a clean `git worktree`), "
                      "else this run's code cannot be checked out again and its row needs a reason in "
                      "results/uncommitted.json")
