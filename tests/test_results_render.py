"""Every committed table re-renders byte-for-byte from its JSON: the Markdown in results/ is what the code makes of
the recorded runs today (a change to a renderer shows up here, and its tables are re-rendered in the same commit:
`python -m benchmarks.report results/<task>/<label>.json`)."""
import json
from pathlib import Path

import pytest

from benchmarks.tables.mc_table import mc_markdown
from benchmarks.tables.labels import preset_of
from benchmarks.tables.merge import load_runs
from benchmarks.tables.speed_table import speed_markdown
from benchmarks.tables.task_table import task_markdown
from benchmarks.tables.uncommitted import reasons_for
from tasks.base import get_task

RESULTS = Path(__file__).resolve().parent.parent / "results"
TABLES = sorted(p for p in RESULTS.rglob("*.json") if p.parent != RESULTS)


def is_task_table(data):
    return isinstance(data, list) and data and "metrics" in data[0] and "config" in data[0]


def task_of(path):
    return get_task(path.relative_to(RESULTS).parts[0])


@pytest.mark.parametrize("path", TABLES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_a_committed_table_re_renders_byte_for_byte(path):
    data = json.loads(path.read_text())
    task = task_of(path)
    if path.stem == "speed":
        text = speed_markdown(task, data, reasons_for(path))
    elif path.stem == "mc":
        text = mc_markdown(task, data)
    elif is_task_table(data):
        text = task_markdown(task, path.stem, data[0].get("preset", preset_of(path.stem)), load_runs(path),
                             reasons_for(path))
    else:
        pytest.skip("a selection table: re-rendered by benchmarks.select from its grid runs")
    assert path.with_suffix(".md").read_text() == text, (
        f"{path.with_suffix('.md')} is not what its JSON renders to today: re-render it "
        f"(python -m benchmarks.report {path.relative_to(RESULTS.parent)}) and commit both")
