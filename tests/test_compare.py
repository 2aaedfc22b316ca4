"""benchmarks.compare: results side by side, paired where the runs pair."""
import json

import pytest

from benchmarks import compare
from core.utils import write_json
from tests.test_reliability import entry
from tests.test_significance import items


def table(path, shift, seeds=(1, 2, 3)):
    runs = []
    for variant, base in (("none", 2.2), ("zaremba", 2.0)):
        for s in seeds:
            run = entry(variant, s, 0.0)
            run["details"] = {"items": {"nll": items(base + shift, seed=s)}}
            nll = [row[0] for row in run["details"]["items"]["nll"]]
            run["metrics"] = {"test_ppl": 2.718281828 ** (sum(nll) / (20 * len(nll))), "valid_ppl": 10.0 + shift}
            runs.append(run)
    write_json(path, runs)
    return path


def test_two_tables_side_by_side_with_the_paired_difference(tmp_path, capsys):
    a = table(tmp_path / "a" / "lm" / "cpu.json", 0.0)
    b = table(tmp_path / "b" / "lm" / "cpu-bf16.json", 0.1)
    compare.main([str(a), str(b), "--out", str(tmp_path / "cmp.md"), "--plot", str(tmp_path / "cmp.png")])
    text = capsys.readouterr().out
    assert text == (tmp_path / "cmp.md").read_text() and (tmp_path / "cmp.png").stat().st_size > 1000
    rows = [line for line in text.splitlines() if line.startswith("| none |") or line.startswith("| zaremba |")]
    assert len(rows) == 4  # test and valid ppl
    test_none = rows[0]
    assert "(3) | " in test_none and ", seeds [" in test_none and "bootstrap [" in test_none and "p < 0.001" in test_none
    assert text.index("| none |") < text.index("| zaremba |")  # the paper's comparison first


def test_a_run_dir_compares_too_and_bad_inputs_are_one_error(tmp_path, capsys):
    a = table(tmp_path / "a" / "lm" / "cpu.json", 0.0)
    run_dir = tmp_path / "runs" / "lm" / "cpu" / "zaremba-p0.5-seed1"
    run_dir.mkdir(parents=True)
    one = json.loads(a.read_text())[3]
    (run_dir / "result.json").write_text(json.dumps({k: one[k] for k in ("metrics", "details", "history")}))
    compare.main([str(a), str(run_dir)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| zaremba | 0.5 |"))
    assert "paired over seeds 1: +0.00" in row
    other = table(tmp_path / "c" / "mt" / "cpu.json", 0.0)
    speed = tmp_path / "a" / "lm" / "speed.json"
    speed.write_text("[]")
    for args, message in (([str(a)], "at least two inputs"), ([str(a), str(other)], "different tasks"),
                          ([str(a), str(tmp_path / "nope.json")], "does not exist"),
                          ([str(a), str(speed)], "speed.json is a speed table (benchmarks.speed), not a results table"),
                          ([str(a), str(a)], "cpu.json is given twice"),
                          ([str(a), str(run_dir), "--run-dir", str(tmp_path / "nope")], "is not a folder"),
                          ([str(a), str(run_dir), "--run-dir", str(tmp_path)], "lm writes no test outputs")):
        with pytest.raises(SystemExit):
            compare.main(args)
        assert message in capsys.readouterr().err


def on_machine(path, gpu, torch_version, seeds=()):
    """Mark the runs of `seeds` (all when empty) of a table as run on `gpu` with `torch_version`."""
    runs = json.loads(path.read_text())
    for run in runs:
        if not seeds or run["seed"] in seeds:
            run["provenance"] = {**run.get("provenance", {}), "gpu": gpu, "torch": torch_version}
    write_json(path, runs)


def test_pairs_across_machines_are_refused_unless_asked_for_and_then_marked(tmp_path, capsys):
    a = table(tmp_path / "a" / "lm" / "cpu.json", 0.0)
    b = table(tmp_path / "b" / "lm" / "cpu-bf16.json", 0.1)
    on_machine(a, None, "2.9.1+cpu")
    on_machine(b, None, "2.9.1+cpu")
    compare.main([str(a), str(b)])  # one machine: paired, nothing marked
    assert "across machines" not in capsys.readouterr().out
    on_machine(a, "NVIDIA H200", "2.11.0", seeds=(2,))
    with pytest.raises(SystemExit):
        compare.main([str(a), str(b)])
    error = capsys.readouterr().err
    assert "none p=0 seed 2: `cpu` on NVIDIA H200, torch 2.11, `cpu-bf16` on" in error
    assert "zaremba p=0.5 seed 2" in error and "seed 1" not in error and "--across-machines" in error
    compare.main([str(a), str(b), "--across-machines"])
    text = capsys.readouterr().out
    assert "**Pairs across machines or code**" in text and "none p=0 seed 2 (`cpu` on NVIDIA H200, torch 2.11" in text
    assert "seed 2 on NVIDIA H200, torch 2.11" in text  # the reference's cell says its seeds' machines
    provenance = text[text.index("## Provenance"):]  # each input's machines, counted, and the command
    assert "`python -m benchmarks.compare " in provenance and " --across-machines` from commit " in provenance
    assert "- `cpu`: 6 runs on " in provenance and "NVIDIA H200, torch 2.11 (2)" in provenance
    assert "(4)" in provenance.split("- `cpu`:")[1].split("\n")[0]
    assert "(" not in provenance.split("- `cpu-bf16`: 6 runs on ")[1].split(";")[0]  # one machine: no count


def test_pairs_from_other_code_are_refused_unless_asked_for_and_then_marked(tmp_path, capsys):
    """Code counts as the machine does: another source hash, or uncommitted code that recorded none."""
    a = table(tmp_path / "a" / "lm" / "cpu.json", 0.0)
    b = table(tmp_path / "b" / "lm" / "cpu-bf16.json", 0.1)
    compare.main([str(a), str(b)])  # the same commit on both sides
    runs = json.loads(b.read_text())
    runs[0]["provenance"] = {**runs[0]["provenance"], "git_commit": "abc-dirty"}  # none seed 1, no source hash
    runs[4]["provenance"] = {**runs[4]["provenance"], "git_commit": "def", "source_hash": "f00"}  # zaremba seed 2
    write_json(b, runs)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        compare.main([str(a), str(b)])
    error = capsys.readouterr().err
    assert "none p=0 seed 1: `cpu` on commit abc, `cpu-bf16` on commit abc-dirty" in error
    assert "zaremba p=0.5 seed 2: `cpu` on commit abc, `cpu-bf16` on commit def" in error and "seed 3" not in error
    compare.main([str(a), str(b), "--across-machines"])
    assert "zaremba p=0.5 seed 2 (`cpu` on commit abc, `cpu-bf16` on commit def)" in capsys.readouterr().out
    for run in runs:  # one source hash names the code whatever the commit (a docs-only commit changes nothing)
        run["provenance"] = {**run["provenance"], "git_commit": "def", "source_hash": "f00"}
    write_json(b, runs)
    write_json(a, [{**run, "provenance": {**run["provenance"], "git_commit": "abc"}} for run in runs])
    compare.main([str(a), str(b)])


def test_run_dirs_give_the_share_of_identical_test_outputs_per_variant(tmp_path, capsys):
    a = table(tmp_path / "results" / "mt" / "cpu.json", 0.0)
    b = table(tmp_path / "results" / "mt" / "cpu-bf16.json", 0.1)
    runs = tmp_path / "runs" / "mt"
    for label, lines in (("cpu", ["a", "b", "c", "d"]), ("cpu-bf16", ["a", "b", "x", "d"])):
        for seed in (1, 2):  # seed 3 left no outputs: not counted
            folder = runs / label / f"none-p0-seed{seed}"
            folder.mkdir(parents=True)
            seed_2 = ["a", "y", "c", "e"] if label == "cpu" else ["a", "b", "c", "d"]
            (folder / "test_outputs.txt").write_text("\n".join(lines if seed == 1 else seed_2) + "\n")
    compare.main([str(a), str(b), "--run-dir", str(tmp_path / "runs")])
    text = capsys.readouterr().out
    assert "## identical test outputs (vs `cpu`, paired seeds)" in text
    assert "| none | 0 | 5 of 8 (62.5%), seeds 1,2 | 2 of 4 (50.0%), seeds 1-2 |" in text  # and cpu's seeds: 1 vs 2
    assert "| zaremba |" not in text.split("identical")[-1] and "not counted" not in text
    compare.main([str(a), str(b)])  # without the run dir: said, not silently left out
    assert "Identical test outputs not counted: add `--run-dir`" in capsys.readouterr().out


def test_tables_of_other_configs_are_refused_and_never_paired_even_when_asked(tmp_path, capsys):
    """Another model or test set (tiny against cpu): refused with the config named; with --across-machines the
    difference of means is shown, never a pairing by seed."""
    a = table(tmp_path / "a" / "lm" / "cpu.json", 0.0)
    b = table(tmp_path / "b" / "lm" / "tiny.json", 0.1)
    runs = json.loads(b.read_text())
    write_json(b, [{**r, "config": {**r["config"], "hidden": 16}} for r in runs])
    with pytest.raises(SystemExit):
        compare.main([str(a), str(b)])
    assert "none p=0 seed 1: `cpu` on hidden 8, `tiny` on hidden 16" in capsys.readouterr().err
    compare.main([str(a), str(b), "--across-machines"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| none |"))
    assert "(not paired: the configs differ in hidden)" in row and "paired over" not in row and "bootstrap" not in row
