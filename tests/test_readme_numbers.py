"""The README's headline numbers are the committed tables' numbers: each cell of its task table recomputed from the
results JSON it links (mean ± std over the seeds of that scheme), so no number there is typed by hand or left
behind when a table is re-run."""
import re
import statistics
from pathlib import Path

import pytest

from benchmarks.tables.format import fmt
from benchmarks.tables.merge import load_runs, singles
from benchmarks.tables.uncommitted import is_dirty
from core.provenance import machine_key
from tasks.base import get_task

ROOT = Path(__file__).resolve().parent.parent
METRICS = {"test ppl": "test_ppl", "BLEU-4": "test_bleu4", "BLEU": "test_bleu", "frame acc": "test_acc"}
COLUMNS = ("none", "zaremba", ("variational", "weightdrop", "zoneout"))


def headline_rows():
    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "](results/" in line
            and line.count("|") == 8]
    assert rows, "the README's headline table is gone"
    return rows


def values(runs, variant, key):
    return [r["metrics"][key] for r in singles(runs) if r["variant"] == variant and key in r["metrics"]]


@pytest.mark.parametrize("row", headline_rows(), ids=lambda r: r.split("|")[2].strip(" `"))
def test_a_headline_row_equals_its_table(row):
    cells = [c.strip() for c in row.strip("|").split("|")]
    table = ROOT / re.search(r"\]\((results/[^)]+)\.md\)", cells[-1])[1]
    runs = load_runs(table.with_suffix(".json"))
    label = next(name for name in METRICS if cells[3].startswith(name))
    key = METRICS[label]
    none = cells[3].removeprefix(label).split("(")[0].strip()
    assert none == fmt(values(runs, "none", key)), f"{table}: none"
    assert cells[4].split("(")[0].strip() == fmt(values(runs, "zaremba", key)), f"{table}: zaremba"
    successors = [c.strip() for c in cells[5].split("/")]
    preset = get_task(table.parent.name).presets[table.stem]
    expected = [f"{statistics.mean(values(runs, v, key)):.2f}" + "*" * (not_clean(runs, v) or not_chosen(runs, v, preset))
                for v in COLUMNS[2]]
    assert successors == expected, f"{table}: variational / weightdrop / zoneout (* where seeds are not clean)"
    for variant in ("none", "zaremba"):
        assert not not_clean(runs, variant), f"{table}: the paper's comparison must come from clean runs of one machine"


def not_chosen(runs, variant, preset):
    """Whether a scheme's runs are at another p than its preset holds now (a choice changed on validation)."""
    held = preset.get("scheme_dropout", {}).get(variant)
    held = held[0] if isinstance(held, list) else held
    return held is not None and any(r["dropout"] != held for r in singles(runs) if r["variant"] == variant)


def not_clean(runs, variant):
    """Whether a scheme's seeds include a run from uncommitted code or ran on more than one machine."""
    group = [r for r in singles(runs) if r["variant"] == variant]
    return any(is_dirty(r) for r in group) or len({machine_key(r.get("provenance", {})) for r in group}) > 1
