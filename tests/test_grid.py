"""benchmarks.grid: the whole comparison as one command (plan, dry run, parallel jobs, a kill and a rerun, a failing
job, a cluster executor) and table merges that never lose a run."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import pytest

import core
from benchmarks import grid
from benchmarks.jobs import runner, selection
from benchmarks.jobs import estimates
from benchmarks.jobs import plan as planning
from benchmarks.tables.merge import load_runs, read_json
from tasks import registry
from tasks.base import TASKS

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent

SCHEMES = textwrap.dedent('''
    import torch
    from core import register_scheme
    from core.schemes import Scheme, Zaremba

    @register_scheme
    class Mine(Zaremba):
        """The paper's masks under another name: a scheme of one's own."""
        name = "mine"

    @register_scheme
    class Broken(Scheme):
        """Turns every output into NaN: the job fails, the others must not."""
        name = "broken"
        fused = False

        def drop_output(self, x, training, masks):
            return x * float("nan")
''')


@pytest.fixture
def user_dir(tmp_path):
    """A folder with the two schemes; what an in-process plan registers from it is taken out again."""
    folder = tmp_path / "my_schemes"
    folder.mkdir()
    (folder / "schemes.py").write_text(SCHEMES)
    schemes, dirs = dict(core.SCHEMES), set(registry._IMPORTED_DIRS)
    yield folder
    core.SCHEMES.clear()
    core.SCHEMES.update(schemes)
    registry._IMPORTED_DIRS.clear()
    registry._IMPORTED_DIRS.update(dirs)


def grid_args(tmp_path, data, user_dir, *more):
    return ["--tasks", "lm", "--preset", "tiny", "--user-dir", str(user_dir), "--data-dir", str(data),
            "--custom-data", "--device", "cpu", "--out", str(tmp_path / "results"), "--run-dir",
            str(tmp_path / "runs"), *more]


def plan_of(argv):
    parser = grid.build_parser()
    return grid.make_plan(parser.parse_args(argv), parser)


def test_plan_selects_p_before_the_seed_runs_that_use_it_and_honours_p_by_hand(tmp_path, tiny_ptb, user_dir):
    jobs, settings, _ = plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "mine", "--seeds", "1,2",
                                          "--grid", "0.1,0.3", "--epochs", "1"))
    names = [j.name() for j in jobs]
    assert names[:2] == ["lm/tiny-e1 mine select p=0.1 seed 1", "lm/tiny-e1 mine select p=0.3 seed 1"]
    waiting = [j for j in jobs if j.variant == "mine" and j.kind == "run"]
    assert [j.seed for j in waiting] == [1, 2] and all(j.p is None and j.after == (0, 1) for j in waiting)
    assert [j.after for j in jobs if j.variant in ("none", "zaremba")] == [()] * 4
    argv = planning.job_argv(jobs[0], settings)
    assert argv[argv.index("--dropout") + 1] == "0.1" and "--valid-only" in argv and "--epochs" in argv
    zaremba = next(j for j in jobs if j.variant == "zaremba")
    assert "--p" not in planning.job_argv(zaremba, settings) and zaremba.p == (0.3, None)  # the preset's p

    jobs, settings, _ = plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "mine,zoneout",
                                          "--p", "mine=0.2,zoneout=0.05/0.5"))
    assert not [j for j in jobs if j.kind == "select"]
    mine = next(j for j in jobs if j.variant == "mine")
    argv = planning.job_argv(mine, settings)
    assert argv[argv.index("--p") + 1] == "mine=0.2" and mine.p_from == "set by hand (--p)"


def test_bad_grid_flags_fail_before_anything_runs(tmp_path, tiny_ptb, user_dir, capsys):
    for argv, message in [(["--variants", "mien"], "unknown ['mien']"),
                          (["--set", "hiden=3"], "did you mean 'hidden'"),
                          (["--p", "naive=0.2"], "'naive' is not in --variants"),
                          (["--grid", "0.1,x"], "--grid 0.1,x: bad rate 'x'"),
                          (["--seeds", "1,1"], "--seeds gives 1 twice: name each once"),
                          (["--seeds", "-1"], "--seeds -1: seeds are integers >= 0"),
                          (["--variants", "mine,mine"], "--variants gives mine twice: name each once"),
                          (["--grid", "0.1,0.10"], "--grid 0.1,0.10 gives 0.1 twice"),
                          (["--set", "max_tokens=0"], "--set max_tokens must be >= 1, got 0"),
                          (["--variants", "none,zaremba", "--grid", "0.1"],  # it would change nothing
                           "--grid: no scheme of this plan is chosen on validation"),
                          (["--variants", "none,zaremba", "--grid", "zoneout=0.05/0.5"],
                           "--grid zoneout=...: no scheme of this plan is chosen on validation"),
                          (["--variants", "mine", "--grid", "zoneout=0.05/0.5"],
                           "--grid zoneout=...: not chosen on validation in this plan (chosen: mine)")]:
        with pytest.raises(SystemExit):
            plan_of(grid_args(tmp_path, tiny_ptb, user_dir, *argv))
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dry_run_trains_nothing_and_estimates_from_the_recorded_wall_times(tmp_path, tiny_ptb, user_dir, capsys):
    table = tmp_path / "results" / "lm" / "tiny.json"
    table.parent.mkdir(parents=True)
    preset = {k: v for k, v in TASKS["lm"].presets["tiny"].items() if k != "scheme_dropout"}
    recorded = [{"variant": "none", "dropout": 0.0, "seed": s, "wall_s": w, "provenance": {"device": "cpu"},
                 "metrics": {}, "history": [], "config": {**preset, "scheme": "none", "seed": s, "dropout": 0.0,
                                                          "precision": "fp32"}}
                for s, w in ((5, 60.0), (6, 120.0))]  # seeds the plan does not train
    recorded[1]["timings"] = {"startup_s": 4.0, "setup_s": 6.0, "train_s": 90.0, "final_s": 20.0}  # 120 s in all
    table.write_text(json.dumps(recorded))
    grid.main(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "mine", "--seeds", "1", "--grid", "0.1,0.3",
                        "--jobs", "2", "--dry-run"))
    out = capsys.readouterr().out
    assert out.startswith("Plan: 2 selection runs (--valid-only, one seed), then 3 runs into lm/tiny")
    assert "mine: chosen on validation" in out and "zaremba: 0.3 (preset)" in out
    # the mean of 60 s (training alone: recorded before the phases were) and 120 s (the whole job)
    assert "#3 lm/tiny none p=0 seed 1: no wait; 1.5 min (2 recorded, training time only)" in out
    assert ("#5 lm/tiny mine p=chosen on validation seed 1: after #1,2; 1.5 min (2 recorded of other schemes, "
            "training time only)") in out
    assert "#1 lm/tiny mine select p=0.1 seed 1: no wait; 1.5 min" in out
    assert "Estimated 4.5 min with 2 jobs at a time" in out  # (select, select) -> (none, zaremba) -> mine
    assert not (tmp_path / "runs").exists() and json.loads(table.read_text()) == recorded


def run_grid(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.grid", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def table_metrics(results):
    """{(table, variant, p, seed): (metrics, history)} of every results and selection table under `results`."""
    found = {}
    for path in sorted(results.glob("*/*.json")):  # <task>/<table>.json (the cross-task schemes.json is beside them)
        data = read_json(path)  # results tables and selection tables
        for r in data["runs"] if isinstance(data, dict) else data:
            history = [{k: v for k, v in h.items() if k != "wall_s"} for h in r.get("history", [])]
            found[(path.name, r["variant"], r["dropout"], r["seed"])] = (r["metrics"], history)
        if isinstance(data, dict):
            found[(path.name, "chosen")] = data["chosen"]
    return found


def test_a_killed_grid_rerun_skips_finished_jobs_resumes_the_rest_and_equals_an_uninterrupted_one(
        tmp_path, tiny_ptb, user_dir):
    common = ["--variants", "mine", "--grid", "0.1,0.3", "--epochs", "1", "--jobs", "2"]
    whole = run_grid(grid_args(tmp_path / "whole", tiny_ptb, user_dir, *common))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    cut = run_grid(grid_args(tmp_path / "cut", tiny_ptb, user_dir, *common))
    for line in cut.stdout:  # the first job to finish, then a kill the grid cannot catch
        if ": finished" in line:
            break
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    dry = run_grid(grid_args(tmp_path / "cut", tiny_ptb, user_dir, *common, "--dry-run")).communicate(timeout=600)[0]
    again = run_grid(grid_args(tmp_path / "cut", tiny_ptb, user_dir, *common))
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    assert "finished before" in output and "0 failed" in output
    finished_before = output.count(": skipped, finished before")
    assert finished_before >= 1
    said = r"(\d+) of the \d+ jobs (?:is|are) in (?:its|their) tables? already"
    footer = int(re.search(r"Grid: \d+ jobs? finished, (\d+) finished before", output)[1])
    assert int(re.search(said, dry)[1]) == int(re.search(said, output)[1]) == footer == finished_before  # one count
    assert re.search(r"\[\d+ of \d+ jobs done(, about [\d.]+ min left|, the time left unknown)", output)
    assert "Took " in output
    assert table_metrics(tmp_path / "cut" / "results") == table_metrics(tmp_path / "whole" / "results")
    chosen = json.loads((tmp_path / "cut" / "results" / "lm" / "tiny-e1-selection.json").read_text())["chosen"]
    mine = [r for r in load_runs(tmp_path / "cut" / "results" / "lm" / "tiny-e1.json") if r["variant"] == "mine"]
    assert mine[0]["dropout"] == chosen["mine"]["dropout"] and mine[0]["p_from"].startswith("chosen on validation")
    schemes = (tmp_path / "cut" / "results" / "schemes-tiny-e1.md").read_text()
    assert "| mine |" in schemes and "lm (tiny-e1)" in schemes  # the cross-task table of the grid's own preset


def test_a_failing_job_leaves_the_others_running_and_is_named_with_its_rerun_command(tmp_path, tiny_ptb, user_dir):
    proc = run_grid(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "broken", "--p", "broken=0.1",
                              "--epochs", "1", "--jobs", "2"))
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1
    assert "Grid: 2 jobs finished, 0 finished before, 1 failed, 0 not run." in output
    assert "- failed: #3 lm/tiny-e1 broken p=0.1 seed 1: exit 1" in output
    assert "rerun: python -m benchmarks.run --task lm --preset tiny --variants broken" in output
    log = tmp_path / "runs" / "grid-logs" / "lm_tiny-e1_broken_p0.1_seed_1.log"
    assert f"log: {log}" in output and "became nan" in log.read_text()
    cause = next(line for line in output.splitlines() if line.startswith("  cause: "))
    assert "nan" in cause.lower() and cause.removeprefix("  cause: ") in log.read_text()  # the job's own error line
    assert [r["variant"] for r in load_runs(tmp_path / "results" / "lm" / "tiny-e1.json")] == ["none", "zaremba"]


def test_the_submitit_executor_runs_a_grid_end_to_end(tmp_path, tiny_ptb, user_dir):
    pytest.importorskip("submitit")
    proc = run_grid(grid_args(tmp_path, tiny_ptb, user_dir, "--epochs", "1", "--jobs", "2", "--executor",
                              "submitit-local", "--time-min", "10"))
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    runs = load_runs(tmp_path / "results" / "lm" / "tiny-e1.json")
    assert [(r["variant"], r["seed"]) for r in runs] == [("none", 1), ("zaremba", 1)]
    assert "(submitit-local)" in output.splitlines()[0]


MERGER = textwrap.dedent('''
    import sys, time
    from benchmarks.tables import merge, task_table
    from tasks.base import load_tasks
    TASKS = load_tasks()
    slow = merge.merge_log
    def merge_log(*args, **kw):  # a slow disk: the read and the write far apart
        out = slow(*args, **kw)
        time.sleep(0.4)
        return out
    task_table.merge_log = merge_log  # the name write_results calls
    seed = int(sys.argv[2])
    run = {"variant": "none", "dropout": 0.0, "seed": seed, "preset": "tiny", "metrics": {"test_ppl": 100.0 + seed,
           "valid_ppl": 101.0, "train_ppl": 90.0}, "history": [{"train_ppl": 90.0, "valid_ppl": 101.0}],
           "best_epoch": 1, "epochs": 1, "wall_s": 1.0, "config": {"hidden": 16, "seed": seed, "scheme": "none",
           "dropout": 0.0}, "provenance": {"command": "x", "git_commit": "c", "torch": "t", "device": "cpu",
           "cpu_model": "m", "torch_threads": 1}, "finished": "now"}
    task_table.write_results(sys.argv[1], TASKS["lm"], "tiny", "tiny", [run])
''')


def test_runs_merged_into_one_table_at_the_same_moment_all_land(tmp_path):
    script = tmp_path / "merger.py"
    script.write_text(MERGER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(seed)], env=env, cwd=ROOT)
             for seed in range(1, 5)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    runs = load_runs(tmp_path / "out" / "lm" / "tiny.json")
    assert sorted(r["seed"] for r in runs) == [1, 2, 3, 4]
    assert "1,2,3,4" in (tmp_path / "out" / "lm" / "tiny.md").read_text()


def grid_run(p, value, cell=None):
    return {"variant": "mine", "dropout": p, "seed": 1, "preset": "tiny", "metrics": {"valid_ppl": value},
            "best_epoch": 1, "config": {"zoneout_cell": cell}, "history": [], "wall_s": 1.0,
            "provenance": {"git_commit": "c", "device": "cpu", "command": "x"}}


def test_a_grid_whose_points_all_tie_is_no_choice_and_says_what_it_falls_back_to():
    task = TASKS["lm"]
    tied = selection.choose(task, [grid_run(0.1, 40.301), grid_run(0.3, 40.298)])
    decision = selection.decide(task, {"dropout": 0.3}, tied)["mine"]
    assert decision == {"dropout": 0.3, "zoneout_cell": None, "at_edge": False, "no_signal": True,
                        "fallback": "the preset's p"}
    text = selection.selection_markdown(task, "tiny", tied, [], {"mine": decision})
    assert "**no signal** (every point 40.30): no choice; falls back to 0.3 (the preset's p)" in text
    assert "scheme_dropout" not in text  # nothing chosen, nothing to copy into a preset
    clear = selection.choose(task, [grid_run(0.1, 40.3), grid_run(0.3, 38.0)])
    assert selection.decide(task, {"dropout": 0.3}, clear)["mine"]["dropout"] == 0.3
    assert not selection.decide(task, {"dropout": 0.3}, clear)["mine"]["no_signal"]


def test_selection_takes_only_the_selection_seed_and_names_the_others(tmp_path):
    folder = tmp_path / "sel" / "lm"
    folder.mkdir(parents=True)
    runs = [{**grid_run(p, v), "seed": s, "config": {**TASKS["lm"].presets["tiny"], "zoneout_cell": None}}
            for p, v, s in ((0.1, 50.0, 1), (0.3, 10.0, 2))]
    (folder / "tiny-select.json").write_text(json.dumps(runs))
    found, notes = selection.collect(TASKS["lm"], "tiny", [tmp_path / "sel"])
    assert [r["dropout"] for r in found] == [0.1]
    assert "has seed 2, not the selection seed 1" in notes[0] and "tiny-select.json" in notes[0]


def test_a_cluster_executor_without_submitit_names_the_extra(monkeypatch, tmp_path):
    from benchmarks.jobs.executors import make_executor

    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without it gives: an ImportError
    with pytest.raises(ValueError, match=r'pip install -e "\.\[cluster\]"'):
        make_executor("slurm", tmp_path, {})


def test_set_reaches_every_declared_config_key_and_names_the_flag_that_does_what_was_meant(capsys):
    parser = runner.build_parser()
    args = parser.parse_args(["--task", "mt", "--preset", "cpu", "--set", "train_limit=100", "--device", "cpu"])
    runner.validate(args, parser)  # a declared key the preset leaves out
    assert args.overrides == {"train_limit": 100}
    for key, flag in (("scheme_dropout", "--p SCHEME=P"), ("epochs", "--epochs N"), ("seed", "--seeds")):
        with pytest.raises(SystemExit):
            runner.validate(parser.parse_args(["--task", "mt", "--set", f"{key}=1", "--device", "cpu"]), parser)
        assert f"--set {key}: use {flag}" in capsys.readouterr().err


def test_a_scheme_run_at_two_p_gets_a_row_per_p_in_the_cross_task_table_never_an_average():
    from benchmarks.tables.cross_task import schemes_markdown

    def r(variant, p, ppl):
        return {"variant": variant, "dropout": p, "seed": 1, "config": {}, "metrics": {"test_ppl": ppl,
                                                                                       "valid_ppl": ppl}}
    runs = [r("none", 0.0, 200.0), r("gauss", 0.1, 190.0), r("gauss", 0.2, 180.0)]
    text = schemes_markdown([("lm", TASKS["lm"], runs)], "tiny-e1")
    assert "| gauss p=0.1 | 190.00 (p=0.1, 1 seed); Δ none -10.00 |" in text
    assert "| gauss p=0.2 | 180.00 (p=0.2, 1 seed); Δ none -20.00 |" in text and "185.00" not in text


def test_rows_of_ones_own_scheme_from_older_user_code_are_trained_again(tmp_path, tiny_ptb, user_dir):
    """Provenance hashes the --user-dir files; a row of the user's own scheme from other user code is not
    'finished before' (built-in schemes' rows are: the user's files do not change them), and the plan says so."""
    from benchmarks.jobs import config as runconfig
    from core.provenance import provenance, user_code, user_code_hash

    jobs, settings, _ = plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "none,mine", "--seeds", "1",
                                          "--p", "mine=0.1"))
    loaded = user_code_hash(user_code())
    assert provenance("cpu")["user_code"] == {"hash": loaded, "files": user_code()} and "schemes" in user_code()
    none, mine = (next(j for j in jobs if j.variant == v and j.kind == "run") for v in ("none", "mine"))
    planned = {**runconfig.preset_config(TASKS["lm"], "tiny", settings.epochs, {}), "precision": settings.precision}

    def table_with(code_hash):
        entries = [{"variant": j.variant, "dropout": j.p[0], "seed": 1, "config": {**planned, "dropout": j.p[0]},
                    "metrics": {}, "provenance": {"user_code": {"hash": code_hash}}, "history": [], "wall_s": 1.0}
                   for j in (none, mine)]
        path = planning.job_table(none, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))

    table_with(loaded)
    assert planning.done_before(none, settings) and planning.done_before(mine, settings)
    from benchmarks.jobs.display import final_metric
    rows = json.loads(planning.job_table(none, settings).read_text())
    rows[0]["metrics"] = {"test_ppl": 123.456, "valid_ppl": 130.0}
    planning.job_table(none, settings).write_text(json.dumps(rows))
    assert final_metric(none, settings) == "test ppl 123.46"  # from its table row: no run dir of its own here
    table_with("0" * 64)  # the scheme's file was edited since
    assert planning.done_before(none, settings) and not planning.done_before(mine, settings)
    paragraph, _ = planning.describe(jobs, settings, "cpu", 1)
    assert "1 row of your own code (mine) came from older --user-dir code: trained again" in paragraph


def test_rerun_trains_again_the_rows_this_commit_and_machine_did_not_make_and_keeps_its_own(tmp_path, tiny_ptb,
                                                                                             user_dir):
    """--rerun: a row from uncommitted code, another commit or another machine is trained again; a row of the
    checked-out commit on this machine is kept, so the same command again skips what it made."""
    from benchmarks.jobs import config as runconfig
    from core.provenance import hardware

    jobs, settings, _ = plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--seeds", "1", "--rerun"))
    commit, digest, machine = settings.rerun
    none = next(j for j in jobs if j.variant == "none" and j.kind == "run")
    planned = {**runconfig.preset_config(TASKS["lm"], "tiny", settings.epochs, {}), "precision": settings.precision,
               "dropout": 0.0}
    here = {**hardware("cpu"), "torch": __import__("torch").__version__, "git_commit": commit.removesuffix("-dirty")}

    def table_with(**prov):
        path = planning.job_table(none, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"variant": "none", "dropout": 0.0, "seed": 1, "config": planned, "metrics": {},
                                     "provenance": {**here, **prov}, "history": [], "wall_s": 1.0}]))

    table_with()
    assert planning.done_before(none, settings) is (not commit.endswith("-dirty"))  # a dirty tree keeps nothing
    table_with(git_commit="1" * 40, source_hash=digest)  # another clean commit of the same code (a docs commit)
    assert planning.done_before(none, settings) is (not commit.endswith("-dirty"))
    for other in ({"git_commit": "0" * 40}, {"git_commit": "0" * 40, "source_hash": "f00"},
                  {"git_commit": commit + "-dirty", "source_hash": digest}, {"gpu": "NVIDIA H200"},
                  {"torch": "1.13.0"}):
        table_with(**other)
        assert not planning.done_before(none, settings), other
    paragraph, lines = planning.describe([none], settings, "cpu", 1)
    assert f"--rerun: 1 row in the tables did not come from the code of commit {commit[:12]} on {machine[0]}" in paragraph
    code = f"other code (commit {commit[:12]}) " if commit.endswith("-dirty") else ""  # a dirty tree: no commit's code
    assert lines[0].endswith(f"; --rerun, its row: {code}on {machine[0]}, torch 1.13"), lines  # only what differs
    assert planning.done_before(none, planning.replace(settings, rerun=None))  # without --rerun: kept
    path = planning.job_table(none, settings)  # the scheme's row at another p: a new row beside it, said
    path.write_text(path.read_text().replace('"dropout": 0.0, "seed"', '"dropout": 0.5, "seed"'))
    _, lines = planning.describe([none], settings, "cpu", 1)
    assert lines[0].endswith("; new row; the table also has none seed 1 at p=0.5"), lines


def test_a_cluster_grid_names_its_jobs_device_without_needing_it_here(tmp_path, tiny_ptb, user_dir, monkeypatch):
    """A login node without a GPU plans GPU jobs: --device cuda goes to the jobs as given and is resolved where they
    run; auto precision is bf16 on cuda; the local executor still refuses a device this machine lacks."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    jobs, settings, device = plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--seeds", "1", "--executor", "slurm",
                                               "--device", "cuda"))  # the last --device counts
    assert device == "cuda" and settings.precision == "bf16" and settings.device == "cuda"
    argv = planning.job_argv(jobs[0], settings)
    assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--precision") + 1] == "bf16"
    assert planning.job_table(jobs[0], settings).name == "tiny-bf16.json"
    for argv in (["--executor", "slurm", "--device", "auto"], ["--device", "cuda"]):
        with pytest.raises(SystemExit):
            plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--seeds", "1", *argv))


def test_a_table_of_another_config_stops_the_grid_before_any_job(tmp_path, tiny_ptb, user_dir, capsys):
    """Rows of another config where the grid's rows would land: one error naming the table and the key, before
    anything runs (never jobs that fail, nor a verdict across configs)."""
    from tests.test_reliability import entry

    table = tmp_path / "results" / "lm" / "tiny-e1.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps([entry("none", 1, 9.0, hidden=999)]))
    with pytest.raises(SystemExit):
        plan_of(grid_args(tmp_path, tiny_ptb, user_dir, "--seeds", "1", "--epochs", "1"))
    error = capsys.readouterr().err
    assert "cannot merge runs with different configs" in error and "hidden" in error
    assert str(table) in error and not (tmp_path / "runs").exists()


def test_a_table_with_no_recorded_run_is_estimated_from_the_speed_table_of_this_kind_of_machine(tmp_path):
    """No run of lm/medium in bf16 recorded: its rate in the task's speed table (this CPU's model and vector
    capability) x PTB's training tokens x the preset's epochs, said as such; another machine's rate is not used."""
    from core.provenance import hardware

    here = {**hardware("cpu"), "torch": __import__("torch").__version__}
    speed = [{"preset": "medium", "results": {"zaremba-bf16": {"train_tok_s": 2000.0}}, "provenance": here}]
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "speed.json").write_text(json.dumps(speed))
    job = planning.Job("lm", "medium", "medium-bf16-cpu", "zaremba", 1, (0.5, None))
    seconds, how = estimates.estimate(tmp_path, job, "cpu", "bf16")
    assert seconds == 39 * 929_589 / 2000.0 and "from the speed table's zaremba-bf16 rate (2,000 items/s" in how
    sources = estimates.estimate_sources  # the plan's header names what its estimates came from, once each
    assert sources([(seconds, how), (None, "no recorded run on this device")], tmp_path, "cpu") == \
        "the task's speed table on this kind of machine"
    assert sources([(60.0, "2 recorded"), (seconds, how)], estimates.ROOT / "results", "cpu") == \
        f"the wall times recorded on cpu in {estimates.ROOT / 'results'}/ and the task's speed table on this kind of machine"
    assert sources([(60.0, "1 recorded")], tmp_path, "cpu") == \
        f"the wall times recorded on cpu in {tmp_path}/ (else the repository's results/)"
    speed[0]["provenance"] = {**here, "cpu_model": "another CPU"}
    (tmp_path / "lm" / "speed.json").write_text(json.dumps(speed))
    assert estimates.speed_estimate(tmp_path, job, "cpu", "bf16") in (None, estimates.speed_estimate(
        estimates.ROOT / "results", job, "cpu", "bf16"))  # only the repository's own table may answer


def test_a_bf16_table_with_no_run_is_estimated_from_the_fp32_table_scaled_by_the_speed_tables_rates(tmp_path):
    """MT knows no epoch size without its data: a bf16 job's time is the fp32 table's recorded runs on this device x
    the fp32 / bf16 rates of the speed table of this kind of machine; without an fp32 row there is no estimate."""
    from core.provenance import hardware
    from tasks.base import get_task

    get_task("mt")  # registered, as a command's plan has it
    here = {**hardware("cpu"), "torch": __import__("torch").__version__}
    rates = {"none": {"train_tok_s": 4000.0}, "none-bf16": {"train_tok_s": 6000.0}}
    (tmp_path / "mt").mkdir()
    (tmp_path / "mt" / "speed.json").write_text(json.dumps([{"preset": "cpu", "results": rates, "provenance": here}]))
    fp32 = [{"variant": "none", "dropout": 0.0, "seed": s, "wall_s": wall, "provenance": {"device": device}}
            for s, wall, device in ((1, 3000.0, "cpu"), (2, 3600.0, "cpu"), (3, 60.0, "cuda:0"))]  # the GPU's: not used
    # a label the repository's results/ has no table of (its own mt/cpu-bf16-cpu would answer first)
    (tmp_path / "mt" / "cpu-e3.json").write_text(json.dumps(fp32))
    job = planning.Job("mt", "cpu", "cpu-e3-bf16-cpu", "none", 1, (0.0, None))
    seconds, how = estimates.estimate(tmp_path, job, "cpu", "bf16")
    assert seconds == 3300.0 * 4000.0 / 6000.0
    threads = here["torch_threads"]
    assert how == (f"2 recorded runs of mt/cpu-e3 x 4,000 / 6,000, the speed table's none / none-bf16 rates at {threads} "
                   f"thread{'s' * (threads != 1)}; training time only")
    del rates["none"]
    (tmp_path / "mt" / "speed.json").write_text(json.dumps([{"preset": "cpu", "results": rates, "provenance": here}]))
    assert estimates.speed_estimate(tmp_path, job, "cpu", "bf16") in (None, estimates.speed_estimate(
        estimates.ROOT / "results", job, "cpu", "bf16"))  # only the repository's own table may answer


def test_sigint_to_a_grid_stops_its_running_jobs_at_a_checkpoint_and_says_that_each_resumes(
        tmp_path, tiny_ptb, user_dir):
    proc = run_grid(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "none", "--seeds", "1,2", "--epochs", "500",
                              "--jobs", "2", "--threads", "1"))
    runs = tmp_path / "runs" / "lm" / "tiny-e500"
    deadline = time.time() + 300
    while not all((runs / f"none-p0-seed{s}" / "checkpoint.pt").exists() for s in (1, 2)):  # both are training
        assert time.time() < deadline and proc.poll() is None, "the jobs never saved a checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert output.count(": stopped, resumes from its checkpoint when the command is run again") == 2, output
    assert "Grid: 0 jobs finished, 0 finished before, 0 failed, 2 stopped, 2 not run." in output  # zaremba waits
    assert "queued, stopped" not in output and "Run the same grid command again" in output


def test_a_job_that_lands_its_row_while_the_grid_stops_it_is_counted_finished_not_stopped(
        tmp_path, tiny_ptb, user_dir):
    env = {**os.environ, "RNNREG_PAUSE_AT": "table_write"}  # the job waits, trained, before writing its table
    proc = run_grid(grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "none", "--epochs", "1", "--jobs", "1",
                              "--threads", "1"), env=env)
    log = tmp_path / "runs" / "grid-logs" / "lm_tiny-e1_none_p0_seed_1.log"
    deadline = time.time() + 300
    while not (log.exists() and "paused at table_write" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "the job never reached its table write"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # the grid stops its job: the job finishes the write under way, exits 143
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert re.search(r"#1 lm/tiny-e1 none p=0 seed 1: finished, test ppl [\d.]+ \(", output), output
    assert "Grid: 1 job finished, 0 finished before, 0 failed, 1 not run." in output and ": stopped" not in output
    assert [r["variant"] for r in load_runs(tmp_path / "results" / "lm" / "tiny-e1.json")] == ["none"]


def test_a_job_signalled_alone_is_stopped_not_failed_and_what_waits_for_it_waits_for_the_next_run(
        tmp_path, tiny_ptb, user_dir):
    common = grid_args(tmp_path, tiny_ptb, user_dir, "--variants", "mine", "--grid", "0.1", "--epochs", "1",
                       "--jobs", "1", "--threads", "1")
    proc = run_grid(common, env={**os.environ, "RNNREG_PAUSE_AT": "training"})  # every job waits at its first step
    logs, signalled = tmp_path / "runs" / "grid-logs", 0
    deadline = time.time() + 300
    while proc.poll() is None:  # a SIGINT to each job itself (as `kill -INT <its pid>` does), never to the grid
        assert time.time() < deadline, "the grid did not end once its jobs were stopped"
        paused = sum(log.read_text().count("paused at training") for log in logs.glob("*.log"))
        if paused > signalled:
            child, = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            os.kill(int(child), signal.SIGINT)
            signalled += 1
        time.sleep(0.1)
    output = proc.stdout.read()
    assert proc.returncode == 1 and signalled == 3, output  # none, zaremba and mine's selection point; mine waits
    assert output.count(": stopped, a SIGINT to the job alone: resumes from its checkpoint") == 3, output
    assert "Grid: 0 jobs finished, 0 finished before, 0 failed, 3 stopped, 1 not run." in output
    assert re.search(r"- not run: #\d, waiting for the stopped #\d\n", output), output
    assert not (tmp_path / "results" / "lm" / "tiny-e1-selection.json").exists()  # no choice from a stopped point
    again = run_grid(common)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and "Grid: 4 jobs finished, 0 finished before, 0 failed, 0 not run." in output, output
    assert len(load_runs(tmp_path / "results" / "lm" / "tiny-e1.json")) == 3
    logs = [log.read_text() for log in (tmp_path / "runs").rglob("log.jsonl")]
    assert len(logs) == 4 and sum('"kind": "resumed"' in log for log in logs) == 3  # mine's seed ran once, whole


def test_the_plan_says_which_preset_p_was_chosen_on_validation(tmp_path):
    jobs, settings, _ = plan_of(["--tasks", "lm", "--preset", "cpu", "--variants", "variational", "--seeds", "1",
                                 "--device", "cpu", "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path)])
    paragraph, _ = planning.describe(jobs, settings, "cpu", 1)
    chosen = TASKS["lm"].presets["cpu"]["scheme_dropout"]["variational"]
    assert f"lm variational: {chosen:g} (preset: chosen on validation)" in paragraph and "zaremba: 0.2 (preset)" in paragraph


def test_a_follow_up_command_repeats_the_grids_own_flags_and_parses_back(tmp_path):
    parser = grid.build_parser()
    args = parser.parse_args(["--tasks", "lm", "--preset", "tiny", "--seeds", "1,2", "--jobs", "1", "--threads", "1",
                              "--data-dir", str(tmp_path / "my data"), "--custom-data", "--out", str(tmp_path / "o"),
                              "--user-dir", "a", "--user-dir", "b"])
    carried = grid.carried_flags(parser, args)
    again = parser.parse_args(["--tasks", "lm", "--preset", "tiny", *__import__("shlex").split(carried)])
    assert vars(again) == vars(args)  # every flag that matters comes back, quoted where it has a space
    assert "--run-dir" not in carried and "--executor" not in carried  # defaults are not repeated
