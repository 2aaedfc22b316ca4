import json

from benchmarks import speed


def test_speed_benchmark_writes_a_table_for_every_implementation(tmp_path, capsys):
    speed.main(["--task", "lm", "--preset", "tiny", "--steps", "2", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path),
                "--device", "cpu"])
    entries = json.loads((tmp_path / "lm" / "speed.json").read_text())
    assert [e["preset"] for e in entries] == ["tiny"]
    assert set(entries[0]["results"]) == {"reference", "none", "zaremba", "naive"}
    assert all(r["train_tok_s"] > 0 and r["eval_tok_s"] > 0 for r in entries[0]["results"].values())
    table = (tmp_path / "lm" / "speed.md").read_text()
    assert "| zaremba |" in table and "| reference |" in table and "vs reference" in table


def test_mt_speed_benchmark_times_training_and_both_beam_widths(tmp_path, capsys):
    speed.main(["--task", "mt", "--preset", "tiny", "--steps", "2", "--repeats", "1", "--warmup", "0",
                "--out", str(tmp_path), "--device", "cpu"])
    entries = json.loads((tmp_path / "mt" / "speed.json").read_text())
    results = entries[0]["results"]
    assert set(results) == {"none", "zaremba"}
    assert all(r[k] > 0 for r in results.values() for k in ("train_tok_s", "eval_tok_s", "beam12_sent_s", "beam1_sent_s"))
    assert "| zaremba |" in (tmp_path / "mt" / "speed.md").read_text()
