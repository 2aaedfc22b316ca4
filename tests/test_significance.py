import json
import random
import statistics

import numpy as np
import pytest

from benchmarks.tables.merge import check_consistent
from benchmarks.tables.task_table import task_markdown
from benchmarks.tables.significance import bleu_from_stats, paired_comparison
from tasks.lm.task import LanguageModelTask


def run(variant, seed, ppl, items=None, **config):
    return {"variant": variant, "dropout": 0.0 if variant == "none" else 0.5, "seed": seed,
            "config": {"hidden": 8, "scheme": variant, "dropout": 0.5, "seed": seed, **config},
            "metrics": {"test_ppl": ppl}, "details": {"items": {"nll": items}} if items else {},
            "history": [], "provenance": {"git_commit": "c", "device": "cpu"}, "wall_s": 1.0}


def test_runs_with_different_configs_are_refused_naming_the_key():
    check_consistent([run("none", 1, 10.0), run("zaremba", 2, 9.0)])  # variant, p and seed may differ
    with pytest.raises(ValueError, match=r"precision: 'fp32' \(none seed 1\) vs 'bf16' \(zaremba seed 2\)"):
        check_consistent([run("none", 1, 10.0, precision="fp32"), run("zaremba", 2, 9.0, precision="bf16")])


def test_the_runner_refuses_before_training_when_the_table_holds_another_config(tmp_path, capsys):
    from benchmarks import run as runner
    from core.utils import write_json

    write_json(tmp_path / "lm" / "tiny.json", [run("none", 1, 10.0, hidden=999)])
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--task", "lm", "--preset", "tiny", "--out", str(tmp_path), "--data-dir", str(tmp_path / "none")])
    assert "cannot merge runs with different configs" in str(exit_.value) and "hidden" in str(exit_.value)


def items(mean_nll, n=400, seed=0):
    rng = random.Random(seed)
    return [[round(rng.gauss(mean_nll, 0.3) * 20, 4), 20] for _ in range(n)]


def test_paired_bootstrap_finds_a_clear_difference_and_not_a_null_one():
    a = [run("zaremba", s, 0.0, items(2.0, seed=s)) for s in (1, 2, 3)]
    b = [run("none", s, 0.0, items(2.1, seed=s)) for s in (1, 2, 3)]
    for r in a + b:  # the table's metric is the one the items give
        nll = np.array(r["details"]["items"]["nll"])
        r["metrics"]["test_ppl"] = float(np.exp(nll[:, 0].sum() / nll[:, 1].sum()))
    clear = paired_comparison(a, b, "ppl", lower_is_better=True)
    assert clear["a_better"] == 3 and clear["b_better"] == 0
    assert clear["boot_ci"][1] < 0 and clear["p"] < 0.01 and clear["seed_ci"][1] < 0
    assert clear["boot_diff"] == pytest.approx(clear["diff"], rel=1e-6)
    same = paired_comparison(a, a, "ppl", lower_is_better=True)
    assert same["boot_ci"][0] <= 0 <= same["boot_ci"][1] and same["p"] == 1.0


def test_bleu_from_sufficient_statistics_equals_sacrebleu():
    from sacrebleu.metrics import BLEU

    rng = random.Random(0)
    words = "a the dog cat runs sits on mat grass red".split()
    refs = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(50)]
    hyps = [" ".join(rng.choices(r.split() + words, k=rng.randint(2, 10))) for r in refs]
    bleu = BLEU(lowercase=True)
    stats = np.array(bleu._extract_corpus_statistics(hyps, [refs])).sum(0)
    assert bleu_from_stats(stats) == pytest.approx(bleu.corpus_score(hyps, [refs]).score, rel=1e-9)


def test_every_table_states_the_difference_with_its_interval():
    runs = [run(v, s, p, items(m, seed=s)) for v, m, p in (("none", 2.1, 8.2), ("zaremba", 2.0, 7.4))
            for s in (1, 2, 3)]
    for r in runs:
        r.update(preset="tiny", best_epoch=1, epochs=1, wall_s=1.0, finished="now",
                 history=[{"train_ppl": 1.0, "valid_ppl": 1.0}],
                 provenance={"git_commit": "abc", "torch": "2", "device": "cpu", "cpu_model": "x", "torch_threads": 1,
                             "command": "c"})
    text = task_markdown(LanguageModelTask, "tiny", "tiny", runs)
    row = next(line for line in text.splitlines() if line.startswith("| zaremba p=0.5 − none p=0 | test ppl"))
    assert "| 1,2,3 | -0.80 |" in row and "significant" in row


def test_report_merges_runs_trained_in_parallel_into_one_table(tmp_path):
    from benchmarks import report
    from core.utils import write_json

    base = {"preset": "tiny", "best_epoch": 1, "epochs": 1, "wall_s": 1.0, "finished": "now",
            "history": [{"train_ppl": 1.0, "valid_ppl": 1.0}],
            "provenance": {"git_commit": "abc", "torch": "2", "device": "cpu", "cpu_model": "x", "torch_threads": 1,
                           "command": "c"}}
    write_json(tmp_path / "a" / "lm" / "tiny.json", [{**run("none", 1, 9.0), **base}])
    write_json(tmp_path / "b" / "lm" / "tiny.json", [{**run("zaremba", 1, 8.0), **base}])
    into = tmp_path / "results" / "lm" / "tiny.json"
    report.main([str(tmp_path / "a" / "lm" / "tiny.json"), str(tmp_path / "b" / "lm" / "tiny.json"), "--into", str(into)])
    merged = json.loads(into.read_text())
    assert [r["variant"] for r in merged] == ["none", "zaremba"] and into.with_suffix(".md").exists()
    write_json(tmp_path / "c" / "lm" / "tiny.json", [{**run("zaremba", 2, 8.0, hidden=99), **base}])
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "c" / "lm" / "tiny.json"), "--into", str(into)])


def test_paired_bootstrap_handles_a_test_set_per_seed():
    """Speech folds: each seed has its own test speaker, so the item lists differ between seeds (not variants)."""
    a = [run("zaremba", s, 0.0, items(2.0, n=300 + 50 * s, seed=s)) for s in (1, 2, 3)]
    b = [run("none", s, 0.0, items(2.2, n=300 + 50 * s, seed=10 + s)) for s in (1, 2, 3)]
    for r in a + b:
        nll = np.array(r["details"]["items"]["nll"])
        r["metrics"]["test_ppl"] = float(np.exp(nll[:, 0].sum() / nll[:, 1].sum()))
    result = paired_comparison(a, b, "ppl", lower_is_better=True)
    assert result["items"] == 350 + 400 + 450 and result["boot_ci"][1] < 0 and result["p"] < 0.01
    b[0]["details"]["items"]["nll"] = b[0]["details"]["items"]["nll"][:-1]  # a pair with different items
    assert paired_comparison(a, b, "ppl", lower_is_better=True).get("boot_ci") is None


def test_the_bootstrap_pairs_only_the_seeds_with_per_item_statistics():
    """A seed trained before per-item statistics existed: the seed interval uses every seed, the bootstrap the
    others, and the table says which."""
    a = [run("zaremba", 1, 7.0)] + [run("zaremba", s, 0.0, items(2.0, seed=s)) for s in (2, 3)]
    b = [run("none", 1, 8.0)] + [run("none", s, 0.0, items(2.2, seed=10 + s)) for s in (2, 3)]
    for r in a + b:
        if r["seed"] > 1:
            r["metrics"]["test_ppl"] = float(np.exp(sum(n for n, _ in r["details"]["items"]["nll"]) /
                                                    sum(t for _, t in r["details"]["items"]["nll"])))
    result = paired_comparison(a, b, "ppl", lower_is_better=True)
    assert result["seeds"] == [1, 2, 3] and result["boot_seeds"] == [2, 3]
    assert result["boot_ci"][1] < 0 and result["p"] < 0.05
    assert paired_comparison(a[1:], b[1:], "ppl", lower_is_better=True).get("boot_seeds") is None  # all seeds: not flagged
    from benchmarks.tables.effects import effects_section

    text = "\n".join(effects_section(LanguageModelTask, a + b, {("zaremba", 0.5): a, ("none", 0.0): b}))
    assert "paired bootstrap (seeds 2,3)" in text and "bootstrap over seeds 2,3: the others have no per-item statistics" in text


def test_a_percentages_seed_interval_stops_at_100_and_the_summary_says_so():
    from benchmarks.tables.task_table import summary
    from benchmarks.tables.significance import seed_interval
    from tasks.speech.task import SpeechTask

    train = [99.81, 99.75, 92.10, 99.70, 99.80, 99.79, 90.00]  # the t interval of these runs past 100
    low, high = seed_interval(train)
    assert high > 100
    assert seed_interval(train, (0, 100)) == (low, 100)
    assert seed_interval([1.0, 3.0], (0, 100))[0] == 0  # and at 0
    assert seed_interval([50.0, 51.0], (0, 100)) == seed_interval([50.0, 51.0])  # inside: unchanged
    runs = [{"variant": "none", "dropout": 0.0, "seed": s, "config": {}, "provenance": {"device": "cpu"},
             "metrics": {"train_acc": a, "valid_acc": 60.0 + s, "test_acc": 61.0 - s, "test_speech_acc": 50.0 + s}}
            for s, a in enumerate(train, 1)]
    text = "\n".join(summary(SpeechTask, runs))
    assert f"{statistics.mean(train):.2f} [{low:.2f}, 100.00]" in text
    assert "clipped to the metric's range where it ran past it: train acc (eval mode)]" in text


def test_without_per_item_statistics_there_is_no_verdict():
    """docs/results.md: significant needs the seed interval *and* the paired bootstrap; seeds alone never say it
    (the caption table once called BLEU-4 differences significant on seeds only)."""
    from benchmarks.tables.effects import effects_section
    from benchmarks.tables.significance import verdict

    a = [run("zaremba", s, 7.0 + 0.1 * s) for s in (1, 2, 3)]
    b = [run("none", s, 8.0 + 0.05 * s) for s in (1, 2, 3)]
    result = paired_comparison(a, b, "ppl", lower_is_better=True)
    assert result["seeds_agree"] and result.get("boot_ci") is None
    assert not result["significant"] and verdict(result) == "no per-item statistics"
    text = "\n".join(effects_section(LanguageModelTask, a + b, {("zaremba", 0.5): a, ("none", 0.0): b}))
    row = next(line for line in text.splitlines() if line.startswith("| zaremba p=0.5 − none p=0"))
    assert row.endswith("| 3 / 0 | — (no per-item statistics) |")
    assert "better on average; no verdict (no per-item statistics, so no paired bootstrap): 3 of 3 seeds" in text
    assert verdict(paired_comparison(a[:1], b[:1], "ppl", lower_is_better=True)) == "one seed"
