"""Every run in results/ comes from a clean recorded commit, or its table says why not (benchmarks.tables.uncommitted)."""
import json
import warnings
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.tables.uncommitted import warn_if_uncommitted
from benchmarks.tables.uncommitted import REGISTRY, undeclared

ROOT = Path(__file__).resolve().parent.parent


def test_every_run_in_results_is_from_a_clean_commit_or_has_a_reason():
    missing = undeclared(ROOT / "results")
    assert not missing, ("runs from uncommitted code with no reason in results/uncommitted.json (commit the code and "
                         f"re-run from a clean tree, or say why): {missing}")


def dirty_table(out):
    """results/lm/small.json's first run, as if trained from uncommitted code, in a table of its own."""
    run = json.loads((ROOT / "results" / "lm" / "small.json").read_text())[0]
    run["provenance"]["git_commit"] = "0123456789abcdef-dirty"
    (out / "lm").mkdir(parents=True)
    (out / "lm" / "small.json").write_text(json.dumps([run]))
    return run


def test_a_dirty_run_fails_the_check_until_its_table_says_why(tmp_path):
    run = dirty_table(tmp_path)
    assert undeclared(tmp_path) == [("lm/small.json", "0123456789abcdef-dirty", f"none seed {run['seed']}")]
    (tmp_path / REGISTRY).write_text(json.dumps({"lm/small.json": {"0123456789abcdef-dirty": "a test's reason"}}))
    assert undeclared(tmp_path) == []
    report.main([str(tmp_path / "lm" / "small.json")])
    table = (tmp_path / "lm" / "small.md").read_text()
    assert "**From uncommitted code** (0123456789ab-dirty" in table and "Why: a test's reason" in table


def test_a_damaged_registry_is_named(tmp_path):
    dirty_table(tmp_path)
    (tmp_path / REGISTRY).write_text("{not json")
    with pytest.raises(ValueError, match=f"{REGISTRY} is damaged"):
        undeclared(tmp_path)


def test_the_runner_warns_before_training_from_a_dirty_tree_into_results(tmp_path):
    dirty = {"git_commit": "0123456789abcdef-dirty"}
    with pytest.warns(UserWarning, match="uncommitted changes.*results/uncommitted.json"):
        warn_if_uncommitted(dirty, ROOT / "results")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_uncommitted(dirty, tmp_path)  # a folder of one's own: no warning
        warn_if_uncommitted({"git_commit": "0123456789abcdef"}, ROOT / "results")  # clean code: none


def test_selection_and_speed_tables_say_why_their_runs_from_uncommitted_code_stay(tmp_path):
    from benchmarks.jobs import selection
    from benchmarks.tables.speed_table import speed_markdown
    from tasks.lm.task import PRESETS, LanguageModelTask

    commit = "0123456789abcdef-dirty"
    (tmp_path / "lm").mkdir()
    (tmp_path / REGISTRY).write_text(json.dumps({"lm/tiny-selection.json": {commit: "a selection's reason"}}))
    run = {"variant": "weightdrop", "dropout": 0.2, "seed": 1, "preset": "tiny", "best_epoch": 2,
           "config": {**{k: v for k, v in PRESETS["tiny"].items()}, "scheme": "weightdrop", "dropout": 0.2, "seed": 1,
                      "precision": "fp32"},
           "metrics": {"valid_ppl": 100.0}, "provenance": {"git_commit": commit, "device": "cpu", "command": "x"}}
    selection.write_selection(tmp_path / "lm" / "tiny-selection", LanguageModelTask, "tiny",
                           selection.choose(LanguageModelTask, [run]), [], PRESETS["tiny"])
    text = (tmp_path / "lm" / "tiny-selection.md").read_text()
    assert "**From uncommitted code** (0123456789ab-dirty" in text and "weightdrop p=0.2 seed 1" in text
    assert "Why: a selection's reason" in text and "| 0.2: 100.00 (2) [uncommitted code] |" in text  # in its cell
    entry = json.loads((ROOT / "results" / "lm" / "speed.json").read_text())[-1]
    entry["provenance"] = {**entry["provenance"], "git_commit": commit}
    table = speed_markdown(LanguageModelTask, [entry], {commit: "a speed section's reason"})
    assert "(0123456789ab-dirty: it cannot be checked out again): this section. Why: a speed section's reason" in table


def test_the_runner_warns_before_replacing_committed_rows_another_machine_or_other_code_made(tmp_path):
    """The quick start's own command lands in results/: the committed rows it would replace are named first."""
    from benchmarks import run
    from benchmarks.jobs.runner import build_parser, validate
    from benchmarks.tables.merge import load_runs

    parser = build_parser()
    args = parser.parse_args(["--task", "lm", "--preset", "cpu", "--variants", "none,zaremba", "--seeds", "1"])
    task_cls = validate(args, parser)
    committed = next(r for r in load_runs(ROOT / "results" / "lm" / "cpu.json") if r["variant"] == "none"
                     and r["seed"] == 1)["provenance"]
    elsewhere = {**committed, "cpu_model": "Intel Xeon", "gpu": None}
    planned = {v: [tmp_path / "runs" / f"{v}-seed1"] for v in ("none", "zaremba")}
    with pytest.warns(UserWarning, match=r"replaces 2 committed row\(s\) of .*lm/cpu.json \(none seed 1, zaremba "
                                         r"seed 1\) made on .+, torch .+, commit .*--out DIR"):
        run.warn_if_replacing(task_cls, args, "cpu", elsewhere, planned)
    (planned["none"][0]).mkdir(parents=True)
    (planned["none"][0] / "result.json").write_text("{}")  # finished: reused by --resume, its row stays
    with pytest.warns(UserWarning, match=r"replaces 1 committed row\(s\) of .*\(zaremba seed 1\)"):
        run.warn_if_replacing(task_cls, args, "cpu", elsewhere, planned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.warn_if_replacing(task_cls, args, "cpu", committed, planned)  # the machine and code that made them
        args.out = str(tmp_path)
        run.warn_if_replacing(task_cls, args, "cpu", elsewhere, planned)  # a folder of one's own: nothing
