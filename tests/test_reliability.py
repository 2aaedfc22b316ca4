"""Never lose or silently replace a result: run dirs that hold a run, tables that merge runs."""
import json
import subprocess
import sys

import pytest

from benchmarks import report, run
from benchmarks.tables import task_table
from benchmarks.jobs.flags import move_aside, run_dir_state, runs_in_the_way
from core.utils import write_json

PROV = {"git_commit": "abc", "torch": "2", "device": "cpu", "cpu_model": "x", "torch_threads": 1, "command": "c"}


def entry(variant, seed, ppl, finished="2026-12-01 10:00 UTC", history=1.0, **config):
    return {"variant": variant, "dropout": 0.0 if variant == "none" else 0.5, "seed": seed, "preset": "tiny",
            "config": {"hidden": 8, "scheme": variant, "dropout": 0.5, "seed": seed, **config},
            "metrics": {"test_ppl": ppl, "valid_ppl": ppl}, "details": {}, "best_epoch": 1, "epochs": 1,
            "wall_s": 1.0, "finished": finished, "history": [{"train_ppl": history, "valid_ppl": ppl}],
            "provenance": PROV}


def lm_tiny(tiny_ptb, tmp_path, *extra):
    return ["--task", "lm", "--preset", "tiny", "--variants", "none", "--epochs", "1", "--data-dir", str(tiny_ptb),
            "--custom-data", "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"), "--no-progress",
            "--device", "cpu", *extra]


def test_a_second_run_into_a_finished_run_dir_stops_and_names_resume_and_overwrite(tiny_ptb, tmp_path, capsys):
    run.main(lm_tiny(tiny_ptb, tmp_path))
    run_dir = tmp_path / "runs" / "lm" / "tiny-e1" / "none-p0-seed1"
    finished = (run_dir / "result.json").read_text()
    with pytest.raises(SystemExit, match=r"none-p0-seed1 holds a finished run \(result.json\)\. Pass --resume .*"
                                         r"--overwrite to start again \(the old run dir is moved aside"):
        run.main(lm_tiny(tiny_ptb, tmp_path))
    assert (run_dir / "result.json").read_text() == finished  # untouched
    capsys.readouterr()
    run.main(lm_tiny(tiny_ptb, tmp_path, "--resume"))  # reuses the finished run
    assert (run_dir / "result.json").read_text() == finished
    run.main(lm_tiny(tiny_ptb, tmp_path, "--overwrite"))
    moved = [p for p in run_dir.parent.iterdir() if p.name.startswith("none-p0-seed1.old-")]
    assert len(moved) == 1 and (moved[0] / "result.json").read_text() == finished  # kept, not deleted
    assert f"moved {run_dir} aside to {moved[0]}" in capsys.readouterr().out
    assert (run_dir / "result.json").exists()
    with pytest.raises(SystemExit):
        run.main(lm_tiny(tiny_ptb, tmp_path, "--overwrite", "--resume"))
    assert "choose one" in capsys.readouterr().err


def test_progress_without_a_result_also_counts(tmp_path):
    run_dir = tmp_path / "r"
    assert run_dir_state(run_dir) is None and runs_in_the_way([run_dir], False, False) == []
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert run_dir_state(run_dir) == "progress (checkpoint.pt)"
    with pytest.raises(ValueError, match="holds progress"):
        runs_in_the_way([run_dir], resume=False, overwrite=False)
    assert runs_in_the_way([run_dir], resume=True, overwrite=False) == []
    assert runs_in_the_way([run_dir], resume=False, overwrite=True) == [run_dir]
    first = move_aside(run_dir)
    run_dir.mkdir()
    second = move_aside(run_dir)
    assert first != second and first.exists() and second.exists() and not run_dir.exists()


def test_report_into_refuses_a_clashing_run_and_says_what_it_merged(tmp_path, capsys):
    a, b, c = (tmp_path / x / "lm" / "tiny.json" for x in "abc")
    write_json(a, [entry("none", 1, 9.0), entry("zaremba", 1, 8.0)])
    write_json(b, [entry("zaremba", 2, 8.1), entry("none", 1, 9.5, epochs=3)])  # none seed 1 again, other config
    into = tmp_path / "results" / "lm" / "tiny.json"
    with pytest.raises(SystemExit) as stop:
        report.main([str(a), str(b), "--into", str(into)])
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert f"refused: none p=0 seed 1 from {b}: its config differs from the same run in {a} (epochs: '<unset>' vs 3)" \
        in err
    assert "3 added, 0 replaced, 1 refused (of 4 runs given)" in out
    kept = json.loads(into.read_text())
    assert [(r["variant"], r["seed"], r["metrics"]["test_ppl"]) for r in kept] == [
        ("none", 1, 9.0), ("zaremba", 1, 8.0), ("zaremba", 2, 8.1)]
    write_json(c, [entry("zaremba", 2, 7.9, finished="2026-12-02 10:00 UTC", history=2.0)])  # a rerun: replaces
    report.main([str(c), "--into", str(into)])
    out = capsys.readouterr().out
    assert "replaced in" in out and "zaremba p=0.5 seed 2: the run in" in out and "0 added, 1 replaced, 0 refused" in out
    assert [r["metrics"]["test_ppl"] for r in json.loads(into.read_text())] == [9.0, 8.0, 7.9]


def test_a_runner_merge_never_drops_rows_it_does_not_replace(tmp_path, capsys):
    from tasks.lm.task import LanguageModelTask

    task_table.write_results(tmp_path, LanguageModelTask, "tiny", "tiny", [entry("none", 1, 9.0), entry("none", 2, 9.1)])
    task_table.write_results(tmp_path, LanguageModelTask, "tiny", "tiny", [entry("none", 2, 9.3, history=3.0)])
    assert "replaced in" in capsys.readouterr().out
    kept = json.loads((tmp_path / "lm" / "tiny.json").read_text())
    assert [(r["seed"], r["metrics"]["test_ppl"]) for r in kept] == [(1, 9.0), (2, 9.3)]
    with pytest.raises(ValueError, match="refused"):
        task_table.write_results(tmp_path, LanguageModelTask, "tiny", "tiny", [entry("none", 1, 9.0, hidden=99)])
    assert len(json.loads((tmp_path / "lm" / "tiny.json").read_text())) == 2


COPY_TASK = '''
from tasks.base import register
from tasks.lm.task import LanguageModelTask
from .helpers import NAME


@register
class Shadowed(LanguageModelTask):
    name = NAME
'''


def test_user_files_live_in_a_private_namespace_and_the_unknown_task_error_lists_them(tmp_path):
    from tests.test_registry import ROOT

    user = tmp_path / "mine"
    user.mkdir()
    (user / "copy.py").write_text(COPY_TASK)  # shares its name with Python's copy module
    (user / "helpers.py").write_text("NAME = 'copytask'\n")
    (user / "json.py").write_text("X = 1\n")  # registers nothing, shares its name with Python's json
    probe = ("import copy, json, sys; from tasks.registry import get_task, load_tasks, USER_FILES; "
             f"load_tasks([{str(user)!r}]); assert hasattr(copy, 'deepcopy') and hasattr(json, 'dumps'); "
             "print(get_task('copytask').__module__); get_task('nope')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("rnnreg_user_") and result.stdout.strip().endswith(".copy")
    assert "unknown task 'nope'" in result.stderr
    assert f"{user / 'copy.py'} registered task copytask" in result.stderr
    assert f"{user / 'json.py'} registered nothing" in result.stderr


# ---- statistics: exact t quantiles, Holm, a bootstrap draw per test set ---------------------------------------

def test_t_quantiles_are_exact_for_every_df():
    from benchmarks.tables.significance import t975

    published = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 30: 2.042, 31: 2.040, 40: 2.021, 60: 2.000, 120: 1.980}
    for df, value in published.items():
        assert t975(df) == pytest.approx(value, abs=5e-4)
    assert t975(10**6) == pytest.approx(1.95996, abs=1e-4)


def test_holm_adjusts_a_family_of_p_values():
    from benchmarks.tables.significance import holm

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_the_bootstrap_shares_its_draw_by_test_set_not_by_item_count():
    import numpy as np

    from benchmarks.tables.significance import _bootstrap_pairs, test_set_key

    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 50, 300).astype(float)
    a = np.stack([rng.binomial(sizes.astype(int), 0.6), sizes], 1).astype(float)
    b = np.stack([rng.binomial(sizes.astype(int), 0.55), sizes], 1).astype(float)
    other = sizes.copy()
    other[0] += 1  # another test set with the same number of items
    a2, b2 = a.copy(), b.copy()
    a2[:, 1] = b2[:, 1] = other
    assert test_set_key(a) == test_set_key(b) != test_set_key(a2)
    width = lambda r: r["boot_ci"][1] - r["boot_ci"][0]  # noqa: E731
    one = _bootstrap_pairs([(a, b)], "acc")
    shared = _bootstrap_pairs([(a, b), (a.copy(), b.copy())], "acc")  # one test set: one draw for both seeds
    assert width(shared) == pytest.approx(width(one))
    own = _bootstrap_pairs([(a, b), (a2, b2)], "acc")  # two test sets: independent draws average out
    assert width(own) < 0.85 * width(one)


def test_tables_state_the_holm_family_and_give_no_verdict_on_one_seed():
    from benchmarks.tables.task_table import task_markdown
    from tasks.lm.task import LanguageModelTask
    from tests.test_significance import items, run as sig_run

    runs = [sig_run(v, s, p, items(m, seed=s)) for v, m, p in (("none", 2.1, 8.2), ("zaremba", 2.0, 7.4),
                                                                ("naive", 2.05, 7.8)) for s in (1, 2, 3)]
    for r in runs:
        r.update(preset="tiny", best_epoch=1, epochs=1, wall_s=1.0, finished="now", provenance=PROV,
                 history=[{"train_ppl": 1.0, "valid_ppl": 1.0}])
    text = task_markdown(LanguageModelTask, "tiny", "tiny", runs)
    assert "over the family of the 3 comparisons of this table" in text and "| Holm p |" in text
    one = task_markdown(LanguageModelTask, "tiny", "tiny", [r for r in runs if r["seed"] == 1])
    row = next(line for line in one.splitlines() if line.startswith("| zaremba p=0.5 − none p=0 | test ppl"))
    assert row.endswith("| — (one seed) |") and "not significant" not in row
