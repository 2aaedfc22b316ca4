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
    for args, message in (([str(a)], "at least two inputs"), ([str(a), str(other)], "different tasks"),
                          ([str(a), str(tmp_path / "nope.json")], "does not exist")):
        with pytest.raises(SystemExit):
            compare.main(args)
        assert message in capsys.readouterr().err
