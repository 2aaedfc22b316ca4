import json
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks import speed
from tasks.base import load_tasks

ROOT = Path(__file__).resolve().parent.parent


def test_speed_benchmark_writes_a_table_for_every_implementation(tmp_path, capsys):
    speed.main(["--task", "lm", "--preset", "tiny", "--steps", "2", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path),
                "--device", "cpu"])
    entries = json.loads((tmp_path / "lm" / "speed.json").read_text())
    assert [e["preset"] for e in entries] == ["tiny"]
    assert set(entries[0]["results"]) == {"reference", "none", "zaremba", "naive", "variational", "weightdrop",
                                          "zoneout"}  # every scheme by default
    assert all(r["train_tok_s"] > 0 and r["eval_tok_s"] > 0 for r in entries[0]["results"].values())
    table = (tmp_path / "lm" / "speed.md").read_text()
    assert "| zaremba |" in table and "| reference |" in table and "vs reference" in table


def test_mt_speed_benchmark_times_training_and_both_beam_widths(tmp_path, capsys):
    speed.main(["--task", "mt", "--preset", "tiny", "--variants", "none,zaremba", "--steps", "2", "--repeats", "1",
                "--warmup", "0", "--out", str(tmp_path), "--device", "cpu"])
    results = json.loads((tmp_path / "mt" / "speed.json").read_text())[0]["results"]
    assert set(results) == {"none", "zaremba"}
    assert all(r[k] > 0 for r in results.values() for k in ("train_tok_s", "eval_tok_s", "beam12_sent_s", "beam1_sent_s"))
    assert "| zaremba |" in (tmp_path / "mt" / "speed.md").read_text()


@pytest.mark.parametrize("name", sorted(load_tasks()))
def test_speed_benchmark_runs_for_every_registered_task(name, tmp_path):
    """Task.synthetic_data stands in for the corpus: every task gets a speed row without any data."""
    task_cls = load_tasks()[name]
    config = {**task_cls.presets["tiny"], "dropout": 0.3}
    results = speed.measure(task_cls, config, ["none", "zaremba"], torch.device("cpu"), steps=2, warmup=0, repeats=1)
    assert {"none", "zaremba"} <= set(results)
    assert all(r["train_tok_s"] > 0 and r["eval_tok_s"] > 0 for r in results.values())


@pytest.mark.parametrize("name", sorted(load_tasks()))
def test_every_task_builds_its_default_preset_on_synthetic_data(name):
    task_cls = load_tasks()[name]
    config = {**task_cls.presets[task_cls.default_preset], "scheme": "zaremba", "seed": 1}
    jobs = speed.scheme_jobs(task_cls, config, "zaremba", torch.device("cpu"), steps=1)[0]
    assert jobs["train_tok_s"][1] > 0


def test_lm_speed_compares_like_with_like_and_reports_tokens_over_median_time(monkeypatch):
    from tasks.lm.reference import ReferenceLM
    from tasks.lm.task import PRESETS, LanguageModelTask

    config = {**PRESETS["tiny"], "dropout": 0.3}
    task = LanguageModelTask({**config, "scheme": "zaremba"})
    task.synthetic_data(batches=2)
    reference = ReferenceLM(len(task.vocab), config["hidden"], config["layers"], config["dropout"])
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(reference) == count(task.build_model())  # the same network is timed on both sides
    impls = ["reference", "none", "zaremba", "naive"]
    pattern = [2.0, 4.0, 1.0, 3.0] * 6  # (train, eval) per impl per repeat
    seconds = iter(pattern)

    def fake_timed(fn, device):
        fn()
        return next(seconds)

    monkeypatch.setattr(speed, "timed", fake_timed)
    results = speed.measure(LanguageModelTask, config, impls[1:], torch.device("cpu"), steps=2, warmup=0, repeats=3)
    tokens = 2 * config["batch_size"] * config["bptt"]
    assert list(results) == impls
    calls = iter(pattern)
    train = {impl: [] for impl in impls}
    for _ in range(3):
        for impl in impls:
            train[impl].append(next(calls))
            next(calls)
    assert all(results[impl]["train_tok_s"] == pytest.approx(tokens / statistics.median(train[impl])) for impl in impls)


def test_graphed_evaluation_is_timed_from_replays_with_a_carried_state(monkeypatch):
    """Evaluation carries the recurrent state from batch to batch as Trainer.evaluate does: a stateful task's step
    is captured only once it has a state, so with None at every batch a "+graphs" row would time eager steps."""
    import core.graphs
    from core import Trainer
    from core.graphs import EagerCapture
    from tasks.lm.task import PRESETS, LanguageModelTask

    monkeypatch.setattr(core.graphs, "CudaCapture", EagerCapture)  # the capture's CPU stand-in
    made = []

    class Recorded(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(speed, "Trainer", Recorded)
    config = {**PRESETS["tiny"], "dropout": 0.3}
    jobs = speed.scheme_jobs(LanguageModelTask, config, "zaremba", torch.device("cpu"), steps=4, graphs=True)[0]
    evaluate = jobs["eval_tok_s"][0]
    evaluate()  # warm-up: 2 eager steps, the capture and a replay
    graphs = made[0].graphs
    before = graphs.replays
    evaluate()
    assert [key[0] for key in graphs.graphs] == ["eval"] and graphs.replays - before == 4


def test_graphed_rows_refuse_schemes_that_swap_parameters(tmp_path, monkeypatch, capsys):
    import core.graphs
    from core.graphs import EagerCapture

    monkeypatch.setattr(core.graphs, "CudaCapture", EagerCapture)  # past the CUDA check: the scheme is refused
    with pytest.raises(SystemExit):
        speed.main(["--task", "lm", "--preset", "tiny", "--device", "cpu", "--cuda-graphs", "--variants",
                    "zaremba,weightdrop", "--out", str(tmp_path)])
    assert "'weightdrop' swaps parameters" in capsys.readouterr().err


def test_the_reference_is_timed_at_the_schemes_p_even_when_none_comes_first():
    """The peer once took the first scheme's config: with `none` first it ran at p=0, its three dropouts off."""
    from tasks.lm.task import PRESETS, LanguageModelTask

    config = {**PRESETS["tiny"], "dropout": 0.3}
    impls = speed.implementations(LanguageModelTask, config, ["none", "zaremba"], torch.device("cpu"), steps=1)
    reference = impls["reference"]["train_tok_s"][0].__defaults__[0].model
    assert {m.p for m in reference.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert reference.rnn.dropout == 0.3  # nn.LSTM's inter-layer dropout


def _speed_entry(**extra):
    return {"preset": "small", "config": {"batch_size": 20, "dropout": 0.5}, "steps": 1, "repeats": 1,
            "results": {"reference": {"train_tok_s": 10.0}, "none": {"train_tok_s": 10.0},
                        "zaremba": {"train_tok_s": 9.0}},
            "provenance": {"device": "cpu", "cpu_model": "x", "torch_threads": 1, "command": "c",
                           "git_commit": "a" * 40, "torch": "2.9"}, "finished": "now", **extra}


def test_speed_sections_print_the_peers_p_as_recorded_with_its_note_and_never_guess_it():
    """The peer's p is what the entry records (older entries: read from the code at their commit, with a note). The
    H200 sections of 70e05835 had `none` first and a reference at the preset's p: no rule from the order of the rows
    can tell them from the p=0 sections of 2026-11-30 to 12-06."""
    from benchmarks.tables.speed_table import speed_markdown
    from tasks.lm.task import LanguageModelTask

    off = speed_markdown(LanguageModelTask, [_speed_entry(peer_dropout=0.0, peer_dropout_note="read from the code at X")])
    assert "**`reference` ran at p=0, its dropout off** (read from the code at X)" in off
    same = speed_markdown(LanguageModelTask, [_speed_entry(peer_dropout=0.5, peer_dropout_note="read from the code at Y")])
    assert "its dropout off" not in same and "`reference` at the same p (read from the code at Y)" in same
    assert "`reference` at the same p." in speed_markdown(LanguageModelTask, [_speed_entry(peer_dropout=0.5)])
    unrecorded = speed_markdown(LanguageModelTask, [_speed_entry()])  # `none` first, as in the H200 sections
    assert "its dropout off" not in unrecorded and "`reference`'s p not recorded" in unrecorded


def test_every_lm_speed_section_records_its_peers_p_and_the_h200_ones_ran_like_for_like():
    from benchmarks.tables.speed_table import speed_markdown
    from tasks.lm.task import LanguageModelTask

    entries = json.loads((ROOT / "results" / "lm" / "speed.json").read_text())
    assert all("peer_dropout" in e for e in entries if e.get("kind") != "trained")
    h200 = [e for e in entries if e["provenance"].get("gpu") == "NVIDIA H200"]
    assert {(e["preset"], e["peer_dropout"]) for e in h200} == {("medium", 0.5), ("large", 0.65)}
    for entry in h200:
        text = speed_markdown(LanguageModelTask, [entry])
        assert "`reference` at the same p (read from the code at commit 70e05835" in text
        assert "its dropout off" not in text


def test_bf16_speed_rows_say_whether_their_quality_was_measured():
    """bf16 rows time an untrained model on random data: a task with no run scored in bf16 against fp32 says its
    quality in bf16 is not measured; LM and MT name where it is, and the comparisons they name exist. fp32-only
    sections say neither."""
    import re
    from benchmarks.tables.speed_table import speed_markdown
    from tasks.lm.task import LanguageModelTask
    from tasks.mt.task import TranslationTask

    bf16 = {"precisions": ["fp32", "bf16"], "peer_dropout": 0.5}
    unmeasured = type("Unmeasured", (TranslationTask,), {"bf16_quality": None})
    text = speed_markdown(unmeasured, [_speed_entry(**bf16)])
    assert "**quality in bf16 not measured**" in text and "ppl or BLEU" in text
    for task in (LanguageModelTask, TranslationTask):
        text = speed_markdown(task, [_speed_entry(**bf16)])
        assert "not measured**" not in text and f"quality in bf16: {task.bf16_quality}" in text
        for name in re.findall(r"[\w-]+\.md", task.bf16_quality):
            assert (ROOT / "results" / task.name / name).exists(), name
        assert "quality in bf16: measured" in (ROOT / "results" / task.name / "speed.md").read_text()
    fp32 = speed_markdown(TranslationTask, [_speed_entry(peer_dropout=0.5)])
    assert "quality in bf16" not in fp32


def test_the_lm_step_bound_counts_every_product_of_the_paper_medium_step():
    """The medium step's FLOPs by hand: softmax layer 3 x 2*700*650*10000; per layer the input product and its two
    gradients, W_hh's gradient (all 2*700*650*2600) and 35 recurrent steps forward and backward (2*20*650*2600
    each, the same total as one input product each way)."""
    from benchmarks.tables.speed_table import fraction_of_bound
    from tasks.lm.task import PRESETS, LanguageModelTask

    task = LanguageModelTask({**PRESETS["medium"], "scheme": "zaremba", "seed": 1})
    task.synthetic_data(batches=1)
    products, tokens = task.training_products()
    assert tokens == 700
    flops = sum(2 * m * k * n * times for m, k, n, times in products)
    expected = 3 * 2 * 700 * 650 * 10000 + 2 * (4 * 2 * 700 * 650 * 2600 + 2 * 2 * 700 * 650 * 2600)
    assert flops == expected
    bound = {"fp32": {"tok_s": 2000.0}, "bf16": {"tok_s": 4000.0}}
    assert fraction_of_bound(bound, "zaremba-bf16", 3000.0) == 0.75
    assert fraction_of_bound(bound, "reference", 1000.0) == 0.5  # peers run in fp32
    assert fraction_of_bound(None, "zaremba", 1000.0) is None


def test_the_speed_table_shows_each_training_row_against_the_bound(tmp_path, capsys):
    speed.main(["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--steps", "1", "--repeats", "1",
                "--no-memory", "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "lm" / "speed.json").read_text())[0]
    bound = entry["bound"]["fp32"]
    assert bound["tok_s"] > 0 and bound["gflop"] > 0
    table = (tmp_path / "lm" / "speed.md").read_text()
    assert "| of bound |" in table and "- bound in fp32:" in table
    row = next(line for line in table.splitlines() if line.startswith("| zaremba |"))
    fraction = entry["results"]["zaremba"]["train_tok_s"] / bound["tok_s"]
    assert f"| {fraction:.0%} |" in row


def test_an_older_speed_section_of_the_same_setup_is_marked_superseded_by_the_newest():
    """Sections are kept as history; one timed again later (same preset, machine, threads, precisions, and every
    row of it) says so and names the newer one; a section of other threads, or one whose rows the newer one lacks,
    stands."""
    from benchmarks.tables.speed_table import speed_markdown
    from tasks.lm.task import LanguageModelTask

    old, new = _speed_entry(peer_dropout=0.5), _speed_entry(peer_dropout=0.5, finished="later")
    new["provenance"] = {**new["provenance"], "git_commit": "b" * 40}
    text = speed_markdown(LanguageModelTask, [old, new])
    assert text.count("**Superseded**") == 1 and "**Superseded** by the section of commit bbbbbbbbbbbb (later)" in text
    assert text.index("**Superseded**") < text.rindex("## preset")  # in the older (first) section
    other_threads = {**new, "provenance": {**new["provenance"], "torch_threads": 2}}
    fewer_rows = {**new, "results": {k: v for k, v in new["results"].items() if k != "zaremba"}}
    for newer in (other_threads, fewer_rows):
        assert "Superseded" not in speed_markdown(LanguageModelTask, [old, newer])
