import json

import pytest
import torch

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


def test_lm_speed_compares_like_with_like_and_reports_tokens_over_median_time(monkeypatch):
    from tasks.lm import PRESETS

    config = {**PRESETS["tiny"], "dropout": 0.3}
    reference = speed.ReferenceLM(speed.VOCAB, config["hidden"], config["layers"], config["dropout"])
    suite = speed.SyntheticLM({**config, "scheme": "zaremba"}).build_model()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(reference) == count(suite)  # the same network is timed on both sides
    seconds = iter([0.1] * 8 + [2.0, 4.0, 1.0, 3.0] * 6)  # warmup calls, then (train, eval) per impl per repeat

    def fake_timed(fn, device):
        fn()
        return next(seconds)

    monkeypatch.setattr(speed.speed_mt, "timed", fake_timed)
    results = speed.measure(config, torch.device("cpu"), steps=2, warmup=1, repeats=3)
    tokens = 2 * config["batch_size"] * config["bptt"]
    assert set(results) == set(speed.IMPLS)
    assert all(r["train_tok_s"] == pytest.approx(tokens / t) for r, t in
               zip(results.values(), _medians(speed.IMPLS)))


def _medians(impls):
    """Median train time per impl for the fake sequence above (8 warmup values, then train/eval pairs)."""
    import statistics

    pattern = [2.0, 4.0, 1.0, 3.0] * 6
    calls = iter(pattern)
    train = {impl: [] for impl in impls}
    for _ in range(3):
        for impl in impls:
            train[impl].append(next(calls))
            next(calls)
    return [statistics.median(train[impl]) for impl in impls]
