"""benchmarks.select: each scheme's p from --valid-only runs, never from a run that read the test split."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import select
from benchmarks.jobs import selection
from benchmarks.jobs.config import parse_point, run_name
from conftest import write_tiny_ptb
from core.utils import write_json
from tasks.lm.task import PRESETS, LanguageModelTask

ROOT = Path(__file__).resolve().parent.parent
PROV = {"git_commit": "abc", "device": "cpu", "cpu_model": "x", "command": "python -m benchmarks.run ..."}


def grid_run(variant, p, valid_ppl, cell=None, preset="tiny", **overrides):
    config = {**PRESETS[preset], **overrides, "scheme": variant, "dropout": p, "seed": 1, "precision": "fp32"}
    config.pop("scheme_dropout", None)
    if cell is not None:
        config["zoneout_cell"] = cell
    return {"variant": variant, "dropout": p, "seed": 1, "preset": preset, "config": config, "best_epoch": 2,
            "metrics": {"valid_ppl": valid_ppl}, "provenance": PROV, "finished": "today", "history": [],
            "wall_s": 1.0}


def write_grid(folder, runs, label="tiny-select"):
    write_json(folder / "lm" / f"{label}.json", runs)


def test_the_best_validation_point_is_chosen_ties_to_the_lower_p(tmp_path):
    write_grid(tmp_path / "a", [grid_run("variational", 0.1, 101.0), grid_run("variational", 0.3, 99.0)])
    write_grid(tmp_path / "b", [grid_run("weightdrop", 0.2, 98.0), grid_run("weightdrop", 0.4, 98.0),
                                grid_run("weightdrop", 0.6, 99.0),
                                grid_run("zoneout", 0.05, 97.0, cell=0.5), grid_run("zoneout", 0.1, 99.5),
                                grid_run("none", 0.0, 90.0)])
    runs, notes = selection.collect(LanguageModelTask, "tiny", [tmp_path])
    chosen = selection.choose(LanguageModelTask, runs)
    assert {v: (b["dropout"], b["config"].get("zoneout_cell")) for v, (b, _) in chosen.items()} == {
        "variational": (0.3, None), "weightdrop": (0.2, None), "zoneout": (0.05, 0.5)}  # none: nothing to choose
    text = selection.selection_markdown(LanguageModelTask, "tiny", chosen, notes)
    assert "| zoneout | 0.05, cells 0.5: 97.00 (2), 0.1: 99.50 (2) | 0.05, cells 0.5 (edge) |" in text
    assert "scheme_dropout={'variational': 0.3, 'weightdrop': 0.2, 'zoneout': [0.05, 0.5]}" in text


def test_only_a_choice_at_the_grids_lowest_or_highest_p_is_marked_at_the_edge():
    grid = [grid_run("zoneout", 0.05, 97.0, cell=0.5), grid_run("zoneout", 0.1, 96.0), grid_run("zoneout", 0.2, 98.0)]
    assert [selection.at_edge(r, grid) for r in grid] == [True, False, True]
    assert not selection.at_edge(grid[0], grid[:1])  # one point: no direction to extend in


def test_higher_is_better_for_accuracy(tmp_path):
    class Accuracy(LanguageModelTask):
        main_metric = "acc"

    runs = [grid_run("variational", p, 0) for p in (0.1, 0.2)]
    runs[0]["metrics"], runs[1]["metrics"] = {"valid_acc": 80.0}, {"valid_acc": 85.0}
    assert selection.choose(Accuracy, runs)["variational"][0]["dropout"] == 0.2


def test_a_run_that_read_test_is_refused_and_another_config_left_out(tmp_path):
    write_grid(tmp_path, [grid_run("variational", 0.1, 101.0), grid_run("variational", 0.2, 100.0, hidden=99)])
    runs, notes = selection.collect(LanguageModelTask, "tiny", [tmp_path])
    assert [r["dropout"] for r in runs] == [0.1] and "differs from preset tiny in hidden" in notes[0]
    bad = grid_run("variational", 0.3, 98.0)
    bad["metrics"]["test_ppl"] = 97.0
    write_grid(tmp_path, [bad], label="tiny-p0.3-select")
    with pytest.raises(ValueError, match="read the test split"):
        selection.collect(LanguageModelTask, "tiny", [tmp_path])


def test_grid_commands_train_valid_only_and_give_zoneout_its_cell_rate(tmp_path):
    points = [parse_point("0.1"), parse_point("0.05/0.5")]
    commands = selection.grid_commands("lm", "tiny", ["zoneout"], points, 1, tmp_path / "o", tmp_path / "r")
    assert all("--valid-only" in c and "--seeds" in c for c in commands)
    assert commands[1][-2:] == ["--set", "zoneout_cell=0.5"] and "zoneout_cell=0.5" not in commands[0]
    with pytest.raises(ValueError, match="zoneout's alone"):
        selection.grid_commands("lm", "tiny", ["variational"], points, 1, tmp_path, tmp_path)
    with pytest.raises(ValueError, match="bad rate"):
        parse_point("high")


def test_main_writes_the_selection_table(tmp_path):
    write_grid(tmp_path / "grid", [grid_run("variational", 0.1, 101.0), grid_run("variational", 0.2, 100.0)])
    select.main(["--task", "lm", "--preset", "tiny", "--collect", str(tmp_path / "grid"), "--out", str(tmp_path / "res")])
    saved = json.loads((tmp_path / "res" / "lm" / "tiny-selection.json").read_text())
    assert saved["chosen"] == {"variational": {"dropout": 0.2, "zoneout_cell": None, "at_edge": True, "no_signal": False}}
    assert len(saved["runs"]) == 2
    assert "| variational | 0.1: 101.00 (2), 0.2: 100.00 (2) | 0.2 (edge) |" in (tmp_path / "res" / "lm" / "tiny-selection.md").read_text()


def test_runner_flags_after_the_double_dash_reach_every_grid_run_and_bad_ones_stop_before_any_run(tmp_path, monkeypatch):
    points = [parse_point("0.1"), parse_point("0.2")]
    commands = selection.grid_commands("lm", "tiny", ["variational"], points, 1, tmp_path / "o", tmp_path / "r",
                                    ["--threads", "1", "--device", "cpu"])
    assert all(c[-4:] == ["--threads", "1", "--device", "cpu"] and "--resume" in c for c in commands)
    with pytest.raises(ValueError, match="--dropout after --"):
        selection.grid_commands("lm", "tiny", ["variational"], points, 1, tmp_path, tmp_path, ["--dropout=0.5"])
    launched = []
    start = selection.start_run
    monkeypatch.setattr(selection, "start_run", lambda c: launched.append(c) or start(["true"]))
    with pytest.raises(SystemExit):  # the runner's parser refuses the flag: nothing is launched
        select.main(["--task", "lm", "--preset", "tiny", "--variants", "variational", "--grid", "0.1",
                     "--work", str(tmp_path), "--", "--threads", "many"])
    assert launched == []


def test_final_evaluates_test_once_from_the_chosen_grid_runs_own_training(tmp_path):
    data = write_tiny_ptb(tmp_path / "data")
    runner = ["--", "--data-dir", str(data), "--custom-data", "--threads", "1"]
    select.main(["--task", "lm", "--preset", "tiny", "--variants", "zoneout", "--grid", "0.05/0.5,0.3",
                 "--work", str(tmp_path / "w"), "--out", str(tmp_path / "res"), "--final", *runner])
    selection = json.loads((tmp_path / "res" / "lm" / "tiny-selection.json").read_text())
    chosen = selection["chosen"]["zoneout"]
    grid = {(r["dropout"], r["config"].get("zoneout_cell")): r for r in selection["runs"]}
    point = grid[(chosen["dropout"], chosen["zoneout_cell"])]
    [final] = [run for path in (tmp_path / "w" / "final" / "lm").glob("*.json") for run in json.loads(path.read_text())]
    assert (final["dropout"], final["config"].get("zoneout_cell")) == (chosen["dropout"], chosen["zoneout_cell"])
    assert final["metrics"]["valid_ppl"] == point["metrics"]["valid_ppl"] and "test_ppl" in final["metrics"]
    assert final["history"] == point["history"]  # the grid run's training, not a new one
    assert not [k for r in grid.values() for k in r["metrics"] if k.startswith("test_")]


def test_final_with_variants_tests_only_those_schemes_and_variants_alone_is_refused(tmp_path, monkeypatch):
    write_grid(tmp_path / "grid", [grid_run("variational", 0.1, 101.0), grid_run("weightdrop", 0.2, 99.0)])
    for variant, p in (("variational", 0.1), ("weightdrop", 0.2)):
        checkpoint = tmp_path / "w" / "runs" / "lm" / "tiny-select" / run_name(variant, p, 1) / "best.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
    launched = []
    start = selection.start_run
    monkeypatch.setattr(selection, "start_run", lambda command: launched.append(command) or start(["true"]))
    common = ["--task", "lm", "--preset", "tiny", "--collect", str(tmp_path / "grid"), "--work", str(tmp_path / "w"),
              "--out", str(tmp_path / "res")]
    select.main([*common, "--variants", "weightdrop", "--final"])
    [command] = launched
    assert command[command.index("--variants") + 1] == "weightdrop" and "--valid-only" not in command
    with pytest.raises(SystemExit):
        select.main([*common, "--variants", "weightdrop"])
    with pytest.raises(SystemExit, match="no grid runs of zoneout"):
        select.main([*common, "--variants", "zoneout", "--final"])
    assert len(launched) == 1


def test_final_refuses_a_collected_run_without_its_checkpoint(tmp_path):
    write_grid(tmp_path / "grid", [grid_run("variational", 0.1, 101.0)])
    runs, _ = selection.collect(LanguageModelTask, "tiny", [tmp_path / "grid"])
    with pytest.raises(ValueError, match="has no checkpoint"):
        selection.final_commands(LanguageModelTask, selection.choose(LanguageModelTask, runs), tmp_path / "work")


def test_a_grid_grows_on_the_existing_table_and_a_new_run_of_a_point_replaces_its_entry(tmp_path):
    common = ["--task", "lm", "--preset", "tiny", "--out", str(tmp_path / "res")]
    write_grid(tmp_path / "day1", [grid_run("variational", 0.1, 101.0), grid_run("variational", 0.2, 100.0)])
    select.main([*common, "--collect", str(tmp_path / "day1")])
    write_grid(tmp_path / "day2", [grid_run("variational", 0.3, 99.0), grid_run("variational", 0.1, 98.0)])
    select.main([*common, "--collect", str(tmp_path / "day2")])  # the day-1 run folders are gone
    saved = json.loads((tmp_path / "res" / "lm" / "tiny-selection.json").read_text())
    assert {r["dropout"]: r["metrics"]["valid_ppl"] for r in saved["runs"]} == {0.1: 98.0, 0.2: 100.0, 0.3: 99.0}
    assert saved["chosen"]["variational"]["dropout"] == 0.1
    select.main([*common, "--collect", str(tmp_path / "day1"), "--fresh"])
    saved = json.loads((tmp_path / "res" / "lm" / "tiny-selection.json").read_text())
    assert sorted(r["dropout"] for r in saved["runs"]) == [0.1, 0.2]


def test_a_kept_point_from_a_table_with_another_config_is_left_out_with_a_note(tmp_path):
    table = tmp_path / "res" / "lm" / "tiny-selection.json"
    write_json(table, {"runs": [grid_run("variational", 0.1, 101.0, hidden=99), grid_run("variational", 0.2, 100.0)]})
    runs, notes = selection.collect(LanguageModelTask, "tiny", [], earlier=table)
    assert [r["dropout"] for r in runs] == [0.2] and "differs from preset tiny in hidden" in notes[0]


def test_a_selection_takes_only_runs_of_its_own_precision(tmp_path):
    bf16 = grid_run("variational", 0.3, 90.0)
    bf16["config"]["precision"] = "bf16"
    write_grid(tmp_path, [grid_run("variational", 0.1, 101.0), bf16])
    runs, notes = selection.collect(LanguageModelTask, "tiny", [tmp_path])
    assert [r["dropout"] for r in runs] == [0.1]  # the better bf16 point does not choose the fp32 p
    assert any("ran in bf16, not fp32" in n for n in notes)
    runs, _ = selection.collect(LanguageModelTask, "tiny", [tmp_path], precision="bf16")
    assert [r["dropout"] for r in runs] == [0.3]


def test_a_bf16_selection_on_a_cpu_has_its_own_table():
    label, precision = selection.shortened(LanguageModelTask, "tiny", ["--precision", "bf16", "--device", "cpu"])[1:]
    from core.precision import native_bf16

    if native_bf16("cpu"):
        assert (label, precision) == ("tiny-bf16-cpu", "bf16")
    else:  # resolved to fp32 with a warning, as the runs themselves would be
        assert (label, precision) == ("tiny", "fp32")


def on(run, gpu):
    run["provenance"] = {**PROV, "torch": "2.9.1", **({"gpu": gpu} if gpu else {})}
    return run


def test_a_choice_between_machines_within_one_seeds_spread_is_refused_naming_the_points(tmp_path):
    """weightdrop 0.2 on a GPU at 105.96 against 0.1 on the CPU at 106.13: 0.17 apart, less than one seed moves."""
    table = tmp_path / "lm" / "tiny.json"
    write_json(table, [dict(grid_run("zaremba", 0.2, v), seed=s) for s, v in ((1, 100.0), (2, 101.0), (3, 99.0))])
    spread = selection.seed_spread(LanguageModelTask, table)
    assert spread == pytest.approx(1.0)
    grid = [on(grid_run("weightdrop", 0.1, 106.13), None), on(grid_run("weightdrop", 0.2, 105.96), "NVIDIA H200"),
            on(grid_run("weightdrop", 0.3, 107.5), "NVIDIA H200")]
    chosen = selection.choose(LanguageModelTask, grid)
    with pytest.raises(ValueError, match=r"weightdrop: p=0.2 105.96 on NVIDIA H200, torch 2.9 against p=0.1 106.13 "
                                         r"on x, torch 2.9, within one seed's spread \(1.00: .*\); re-run them on one "
                                         r"machine: python -m benchmarks.select --task lm --preset tiny --variants "
                                         r"weightdrop --grid 0.2,0.1$"):
        selection.write_selection(tmp_path / "lm" / "tiny-selection", LanguageModelTask, "tiny", chosen, [],
                               PRESETS["tiny"])
    assert not (tmp_path / "lm" / "tiny-selection.json").exists()  # nothing written
    grid[0]["metrics"]["valid_ppl"] = 109.0  # now 3.04 apart: the choice stands, and the table says where each ran
    selection.write_selection(tmp_path / "lm" / "tiny-selection", LanguageModelTask, "tiny",
                           selection.choose(LanguageModelTask, grid), [], PRESETS["tiny"])
    text = (tmp_path / "lm" / "tiny-selection.md").read_text()
    assert "(seed 1)" in text and "ran on 2 machines" in text and "0.1: 109.00 (2) [x, torch 2.9]" in text


def test_one_machine_needs_no_seed_spread():
    grid = [on(grid_run("weightdrop", 0.1, 106.13), None), on(grid_run("weightdrop", 0.2, 105.96), None)]
    selection.check_one_machine(LanguageModelTask, selection.choose(LanguageModelTask, grid), None, "tiny")


@pytest.mark.parametrize("table", sorted((ROOT / "results").glob("*/*-selection.json")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_holds_the_p_its_committed_selection_table_chose(table):
    """A preset's p for a scheme is the one chosen on validation: a re-run grid point that changes a choice fails
    here until the preset takes it (and its seeds are trained again at the new p)."""
    import json

    from tasks.base import get_task

    task = get_task(table.parent.name)
    preset = task.presets[table.stem.removesuffix("-selection")]
    for variant, decision in json.loads(table.read_text())["chosen"].items():
        if decision["no_signal"]:
            continue
        chosen = decision["dropout"] if decision["zoneout_cell"] is None else [decision["dropout"],
                                                                                decision["zoneout_cell"]]
        held = preset["dropout"] if variant == "zaremba" else preset.get("scheme_dropout", {}).get(variant)
        assert held == chosen, f"{table.name}: {variant} chose {chosen}, the preset holds {held}"


def test_sigint_to_select_alone_stops_its_running_grid_runs_at_a_checkpoint_and_the_rerun_resumes_them(tmp_path):
    data = write_tiny_ptb(tmp_path / "data")
    argv = [sys.executable, "-m", "benchmarks.select", "--task", "lm", "--preset", "tiny", "--variants",
            "variational", "--grid", "0.1,0.3", "--jobs", "2", "--work", str(tmp_path / "w"), "--out",
            str(tmp_path / "res"), "--", "--data-dir", str(data), "--custom-data", "--threads", "1", "--device", "cpu"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "RNNREG_PAUSE_AT": "training"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    paused = 0
    for line in proc.stdout:  # both grid runs wait at their first step; then a signal to select's pid alone
        paused += line.strip() == "paused at training"
        if paused == 2:
            proc.send_signal(signal.SIGINT)
            break
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "passing SIGINT to the 2 running grid run(s): each stops, saving a checkpoint" in output, output
    assert "SIGTERM" not in output and "stopped by SIGINT" in output
    runs = sorted((tmp_path / "w" / "runs").rglob("checkpoint.pt"))
    assert len(runs) == 2 and not (tmp_path / "res" / "lm" / "tiny-selection.json").exists()
    again = subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    logs = [(run.parent / "log.jsonl").read_text() for run in runs]
    assert all('"kind": "resumed"' in log for log in logs)
    assert json.loads((tmp_path / "res" / "lm" / "tiny-selection.json").read_text())["chosen"]["variational"]
