"""--ensemble: averaged probabilities, generic over the tasks, its own row in the results."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import run
from core import Trainer, TrainConfig
from core.utils import seed_everything
from tasks.base import IGNORE, load_checkpoint, pass_groups
from tasks.lm.task import LanguageModelTask
from tasks.mt.task import TranslationTask
from tasks.mt.task import PRESETS as MT_PRESETS
from tests.test_mt import write_tiny_multi30k
from tests.test_speech import tiny_task, write_tiny_fsdd


def two_models(task):
    seed_everything(1)
    first = task.build_model()
    seed_everything(2)
    return first, task.build_model()


def single(task, model, split, tmp_path):
    return Trainer(task, model, TrainConfig(epochs=1), tmp_path / "run", "cpu", progress=False).evaluate(split)


def test_ensemble_of_identical_lm_members_equals_one_member(tiny_ptb, tiny_config, tmp_path):
    task = LanguageModelTask(tiny_config, tiny_ptb, download=False, custom_data=True).load_data()
    model, _ = two_models(task)
    alone = single(task, model, "valid", tmp_path)
    pair = task.ensemble_metrics([model, model], "valid", "cpu")
    assert pair["ppl"] == pytest.approx(alone["ppl"], rel=1e-5)


def test_ensemble_averages_the_members_probabilities(tiny_ptb, tiny_config):
    task = LanguageModelTask({**tiny_config, "eval_batch_size": 2}, tiny_ptb, download=False, custom_data=True).load_data()
    a, b = two_models(task)
    for m in (a, b):
        m.eval()
    nll, count, states = 0.0, 0, [None, None]
    with torch.no_grad():
        for inputs, targets in task.batches("valid", "cpu"):
            (la, states[0]), (lb, states[1]) = a(inputs, states[0]), b(inputs, states[1])
            probs = (F.softmax(la, -1) + F.softmax(lb, -1)) / 2
            nll -= float(probs.gather(-1, targets[..., None]).log().sum())
            count += targets.numel()
    assert task.ensemble_metrics([a, b], "valid", "cpu")["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_item_rows_of_an_evaluation_are_its_rows_losses_and_add_up_to_its_metrics(tiny_ptb, tiny_config):
    task = LanguageModelTask({**tiny_config, "eval_batch_size": 2}, tiny_ptb, download=False, custom_data=True).load_data()
    model, other = two_models(task)
    model.eval()
    rows, state = [], None
    with torch.no_grad():
        for inputs, targets in task.batches("valid", "cpu"):
            logits, state = model(inputs, state)
            rows += [[float(r.sum()), r.numel()] for r in F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")]
    items = task.item_stats(model, "valid", "cpu")["nll"]
    assert [c for _, c in items] == [c for _, c in rows]
    assert [n for n, _ in items] == pytest.approx([n for n, _ in rows], abs=1e-3)
    pair = task.ensemble_metrics([model, other], "valid", "cpu", items=True)
    summed = pair.pop("items")["nll"]
    assert pair == task.ensemble_metrics([model, other], "valid", "cpu")  # the rows change nothing else
    assert sum(n for n, _ in summed) / sum(c for _, c in summed) == pytest.approx(pair["loss"], rel=1e-5)


def test_ensemble_of_identical_mt_members_equals_one_member_in_ppl_and_translations(tmp_path):
    data = write_tiny_multi30k(tmp_path / "data", sizes=(60, 12, 12))
    task = TranslationTask({**MT_PRESETS["tiny"], "scheme": "zaremba", "seed": 1}, data, download=False,
                           custom_data=True).load_data()
    model, _ = two_models(task)
    alone = single(task, model, "test", tmp_path)
    assert task.ensemble_metrics([model, model], "test", "cpu")["ppl"] == pytest.approx(alone["ppl"], rel=1e-5)
    one, one_details = task.final_metrics(model, "test", "cpu")
    two, two_details = task.final_metrics([model, model], "test", "cpu")
    assert one_details["outputs"] == two_details["outputs"] and one["bleu"] == two["bleu"]


def test_ensemble_of_identical_speech_members_equals_one_member(tmp_path):
    task = tiny_task(write_tiny_fsdd(tmp_path / "data"), tmp_path / "cache")
    model, other = two_models(task)
    alone = single(task, model, "test", tmp_path)
    pair = task.ensemble_metrics([model, model], "test", "cpu")
    assert pair["acc"] == pytest.approx(alone["acc"]) and pair["ce"] == pytest.approx(alone["ce"], rel=1e-5)
    assert [p.tolist() for p in task.predict([model, model], "test", "cpu")] == [
        p.tolist() for p in task.predict(model, "test", "cpu")]
    labels = task.data["test"]["labels"][0]
    assert (labels != IGNORE).all() and len(task.predict([model, other], "test", "cpu")[0]) == len(labels)


def test_runner_ensemble_row(tiny_ptb, tmp_path):
    out = tmp_path / "results"
    run.main(["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--ensemble", "2", "--data-dir",
              str(tiny_ptb), "--custom-data", "--out", str(out), "--run-dir", str(tmp_path / "runs"),
              "--no-progress", "--device", "cpu"])
    entries = json.loads((out / "lm" / "tiny.json").read_text())
    assert [(e["seed"], e.get("ensemble")) for e in entries] == [(1, None), (2, None), (None, [1, 2])]
    ensemble = entries[-1]
    assert {"valid_ppl", "test_ppl"} <= set(ensemble["metrics"]) and ensemble["history"] == []
    assert not any(key.startswith("train_") for key in ensemble["metrics"])
    table = (out / "lm" / "tiny.md").read_text()
    assert "| zaremba (ensemble of 2) | 0.3 | — |" in table and "ensemble of seeds 1,2" in table


@pytest.mark.parametrize("flags, message", [
    (["--ensemble", "1"], "at least 2 members"),
    (["--ensemble", "3", "--seeds", "1,2"], "--seeds gives 2"),
    (["--mc-samples", "1"], "--mc-samples needs K >= 2"),
])
def test_bad_ensemble_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        run.main(["--task", "lm", "--preset", "tiny", *flags])
    assert message in capsys.readouterr().err


def manual_mc_ppl(task, model, samples, vectorized):
    """Perplexity of `samples` dropout passes' averaged probabilities, written out: one pass after the other (each
    with its own state) or all passes as one batch of samples x rows (pass k in rows k*B..(k+1)*B)."""
    nll, count, states, state = 0.0, 0, [None] * samples, None
    model.train()
    with torch.no_grad():
        for inputs, targets in task.batches("valid", "cpu"):
            if vectorized:
                out, state = model(inputs.repeat(samples, 1), state)
                probs = F.softmax(out.view(samples, *inputs.shape, -1), -1).mean(0)
            else:
                probs = 0
                for i in range(samples):
                    out, states[i] = model(inputs, states[i])
                    probs = probs + F.softmax(out, -1) / samples
            nll -= float(probs.gather(-1, targets[..., None]).log().sum())
            count += targets.numel()
    model.eval()
    return math.exp(nll / count)


@pytest.mark.parametrize("scheme, embed_dropout, vectorized", [
    ("zaremba", 0.0, True), ("variational", 0.0, True), ("zoneout", 0.0, True),
    ("weightdrop", 0.0, False), ("zaremba", 0.2, False),  # a mask shared by the rows of a pass: one pass at a time
])
def test_mc_dropout_averages_passes_with_their_own_masks(tiny_ptb, tiny_config, scheme, embed_dropout, vectorized):
    config = {**tiny_config, "scheme": scheme, "embed_dropout": embed_dropout, "eval_batch_size": 2}
    task = LanguageModelTask(config, tiny_ptb, download=False, custom_data=True).load_data()
    model, _ = two_models(task)
    with torch.no_grad():  # larger weights than at init, so that masks move the probabilities visibly
        for weight in model.parameters():
            weight.mul_(10)
    before = [p.clone() for p in model.parameters()]
    seed_everything(5)
    expected = manual_mc_ppl(task, model, 3, vectorized)
    seed_everything(5)
    mc = task.mc_dropout_metrics(model, "valid", "cpu", 3)
    assert mc["ppl"] == pytest.approx(expected, rel=1e-5)
    assert mc["ppl"] != pytest.approx(task.ensemble_metrics([model], "valid", "cpu")["ppl"], rel=1e-2)  # dropout on
    assert not model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("eval_batch_size", [1, 2])
def test_mc_dropout_of_a_model_without_dropout_is_the_standard_evaluation(tiny_ptb, tiny_config, eval_batch_size):
    task = LanguageModelTask({**tiny_config, "scheme": "none", "dropout": 0.0, "eval_batch_size": eval_batch_size},
                             tiny_ptb, download=False, custom_data=True).load_data()
    model, _ = two_models(task)
    mc = task.mc_dropout_metrics(model, "valid", "cpu", 3)
    assert mc["ppl"] == pytest.approx(task.ensemble_metrics([model], "valid", "cpu")["ppl"], rel=1e-5)


def test_mc_dropout_one_pass_at_a_time_is_the_default_for_other_tasks(tmp_path):
    task = tiny_task(write_tiny_fsdd(tmp_path / "data"), tmp_path / "cache")
    model, _ = two_models(task)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    task.mc_dropout_metrics(model, "test", "cpu", 3)
    assert len(calls) == 3 * len(list(task.batches("test", "cpu")))


def manual_mc_curve(task, model, samples):
    """{k: perplexity of the first k of `samples` dropout passes}, the passes run one after the other per batch,
    each with its own state."""
    nll, count, states = [0.0] * samples, 0, [None] * samples
    model.train()
    with torch.no_grad():
        for inputs, targets in task.batches("valid", "cpu"):
            probs = 0
            for i in range(samples):
                out, states[i] = model(inputs, states[i])
                probs = probs + F.softmax(out, -1)
                nll[i] -= float((probs / (i + 1)).gather(-1, targets[..., None]).log().sum())
            count += targets.numel()
    model.eval()
    return {i + 1: math.exp(value / count) for i, value in enumerate(nll)}


def test_pass_groups_reach_every_count_in_groups_no_larger_than_asked():
    assert pass_groups([1, 2, 5, 10, 20], 10) == [1, 1, 3, 5, 10]
    assert pass_groups([25], 10) == [10, 10, 5]
    assert pass_groups([3], 10) == [3]


@pytest.mark.parametrize("scheme", ["zaremba", "weightdrop"])
def test_mc_dropout_curve_gives_every_prefix_of_one_run_of_passes(tiny_ptb, tiny_config, scheme):
    task = LanguageModelTask({**tiny_config, "scheme": scheme, "eval_batch_size": 2}, tiny_ptb, download=False,
                             custom_data=True).load_data()
    model, _ = two_models(task)
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(10)
    seed_everything(5)
    expected = manual_mc_curve(task, model, 4)
    seed_everything(5)
    curve = task.mc_dropout_curve(model, "valid", "cpu", [4, 1, 2], group=1)
    assert sorted(curve) == [1, 2, 4]
    for k in curve:
        assert curve[k]["ppl"] == pytest.approx(expected[k], rel=1e-5)
    assert curve[1]["ppl"] != pytest.approx(curve[4]["ppl"], rel=1e-3)
    seed_everything(5)  # grouped passes (here 1 + 1 + 2, the last two as one batch) give the same kind of estimate
    grouped = task.mc_dropout_curve(model, "valid", "cpu", [1, 2, 4], group=2)
    assert grouped[1]["ppl"] == pytest.approx(expected[1], rel=1e-5)
    assert not model.training


def test_an_interrupted_mc_curve_resumes_to_exactly_the_uninterrupted_result(tiny_ptb, tiny_config, tmp_path,
                                                                          monkeypatch, capsys):
    task = LanguageModelTask({**tiny_config, "eval_batch_size": 2}, tiny_ptb, download=False, custom_data=True).load_data()
    model, _ = two_models(task)
    ask = dict(split="valid", device="cpu", counts=[1, 3], group=2, items=True)
    seed_everything(5)
    whole = task.mc_dropout_curve(model, **ask)
    batches, cut_at = task.batches, task.num_batches("valid") // 2
    assert cut_at >= 1

    def interrupted(split, device):
        for i, batch in enumerate(batches(split, device)):
            if i == cut_at:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(LanguageModelTask, "mc_save_every_s", 0)  # save after every batch
    saved = tmp_path / "mc-valid.partial.pt"
    monkeypatch.setattr(task, "batches", interrupted)
    seed_everything(5)
    with pytest.raises(KeyboardInterrupt):
        task.mc_dropout_curve(model, **ask, resume=saved)
    assert torch.load(saved, weights_only=False)["so_far"][3] == cut_at
    monkeypatch.setattr(task, "batches", batches)
    seed_everything(99)  # the saved RNG state, not this seed, draws the remaining masks
    assert task.mc_dropout_curve(model, **ask, resume=saved) == whole and not saved.exists()
    assert f"continuing the MC-dropout evaluation saved in {saved} at batch {cut_at}" in capsys.readouterr().out
    monkeypatch.setattr(task, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        task.mc_dropout_curve(model, **ask, resume=saved)
    monkeypatch.setattr(task, "batches", batches)
    seed_everything(5)
    with pytest.warns(UserWarning, match="another MC-dropout evaluation"):  # other pass counts: starts afresh
        fresh = task.mc_dropout_curve(model, **{**ask, "counts": [1, 2]}, resume=saved)
    seed_everything(5)
    assert fresh == task.mc_dropout_curve(model, **{**ask, "counts": [1, 2]})


def test_mc_dropout_refuses_batchnorm(tiny_ptb, tiny_config):
    task = LanguageModelTask(tiny_config, tiny_ptb, download=False, custom_data=True).load_data()
    model, _ = two_models(task)
    model.norm = torch.nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="BatchNorm"):
        task.mc_dropout_metrics(model, "valid", "cpu", 2)


def test_runner_mc_samples_adds_mc_metrics_to_finished_runs_without_retraining(tiny_ptb, tmp_path):
    common = ["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--seeds", "1,2", "--data-dir",
              str(tiny_ptb), "--custom-data", "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"),
              "--no-progress", "--device", "cpu"]
    run.main(common)
    table = tmp_path / "results" / "lm" / "tiny.json"
    plain = json.loads(table.read_text())
    run.main(common + ["--resume", "--mc-samples", "3"])
    entries = json.loads(table.read_text())
    assert [e["history"] for e in entries] == [e["history"] for e in plain]
    for entry, old in zip(entries, plain):
        assert entry["mc"]["samples"] == 3 and entry["metrics"]["test_ppl"] == old["metrics"]["test_ppl"]
        assert entry["provenance"] == old["provenance"] and "--mc-samples 3" in entry["mc"]["provenance"]["command"]
        assert entry["metrics"]["test_mc_ppl"] != entry["metrics"]["test_ppl"] and "valid_mc_ppl" in entry["metrics"]
    markdown = (tmp_path / "results" / "lm" / "tiny.md").read_text()
    assert "MC-dropout evaluation" in markdown and "probabilities of 3 passes averaged" in markdown
    assert "zaremba p=0.3" in markdown.split("MC-dropout evaluation")[1] and "95% CI [" in markdown


def test_merging_a_re_reported_run_keeps_its_training_record_and_a_retrained_one_replaces_it():
    from benchmarks.tables.merge import merge_runs

    def entry(history, command, metrics):
        return {"variant": "zaremba", "dropout": 0.3, "seed": 1, "history": history, "metrics": metrics,
                "provenance": {"command": command}, "wall_s": len(command), "finished": command}

    trained = entry([{"epoch": 1, "wall_s": 3.0}], "train", {"test_ppl": 9.0})
    [again] = merge_runs([trained], [entry(trained["history"], "evaluate", {"test_ppl": 9.0, "test_mc_ppl": 8.9})])
    assert again["provenance"] == {"command": "train"} and again["finished"] == "train" and again["wall_s"] == 5
    assert again["metrics"]["test_mc_ppl"] == 8.9
    [retrained] = merge_runs([trained], [entry([{"epoch": 1, "wall_s": 4.0}], "retrain", {"test_ppl": 8.0})])
    assert retrained["provenance"] == {"command": "retrain"} and retrained["metrics"] == {"test_ppl": 8.0}


def test_mc_benchmark_curve_matches_the_runner_and_refuses_unsuitable_checkpoints(tiny_ptb, tmp_path, capsys):
    from benchmarks import mc

    common = ["--task", "lm", "--preset", "tiny", "--seeds", "1", "--data-dir", str(tiny_ptb), "--custom-data",
              "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"), "--no-progress", "--device", "cpu"]
    run.main(common + ["--variants", "none,zaremba", "--mc-samples", "3"])
    [_, trained] = json.loads((tmp_path / "results" / "lm" / "tiny.json").read_text())
    checkpoint = tmp_path / "runs" / "lm" / "tiny" / "zaremba-p0.3-seed1" / "best.pt"
    flags = ["--data-dir", str(tiny_ptb), "--custom-data", "--out", str(tmp_path / "mc"), "--device", "cpu"]
    capsys.readouterr()
    mc.main([str(checkpoint), "--passes", "3"] + flags)
    assert "zaremba-p0.3-seed1 valid MC 3" in capsys.readouterr().err  # its progress bar
    assert not list(checkpoint.parent.glob("mc-*.partial.pt"))  # the saved progress is gone once done
    [entry] = json.loads((tmp_path / "mc" / "lm" / "mc.json").read_text())
    task, model = load_checkpoint(checkpoint)
    data = LanguageModelTask(task.config, tiny_ptb, download=False, custom_data=True).load_data()
    seed_everything(1)  # the run's seed, set before each split's passes
    assert entry["mc"]["valid"]["3"]["ppl"] == pytest.approx(data.mc_dropout_metrics(model, "valid", "cpu", 3)["ppl"])
    assert entry["mc"]["valid"]["3"]["ppl"] != pytest.approx(entry["standard"]["valid"]["ppl"], rel=1e-6)
    assert entry["standard"]["test"]["ppl"] == pytest.approx(trained["metrics"]["test_ppl"], rel=1e-5)
    boot = entry["bootstrap"]["valid"]  # MC minus standard over the same items, from per-item statistics
    assert boot["boot_diff"] == pytest.approx(entry["mc"]["valid"]["3"]["ppl"] - entry["standard"]["valid"]["ppl"],
                                              abs=1e-3)
    assert boot["boot_ci"][0] <= boot["boot_diff"] <= boot["boot_ci"][1] and "items" not in entry["mc"]["valid"]["3"]
    mc.main([str(checkpoint), "--passes", "1,2,4", "--no-progress"] + flags)  # the same again: replaces its entry
    assert "MC 4" not in capsys.readouterr().err
    [entry] = json.loads((tmp_path / "mc" / "lm" / "mc.json").read_text())
    assert sorted(entry["mc"]["test"], key=int) == ["1", "2", "4"] and entry["passes"] == [1, 2, 4]
    assert "| MC 1 | MC 2 | MC 4 | Δ | 95% CI | p |" in (tmp_path / "mc" / "lm" / "mc.md").read_text()
    assert (tmp_path / "mc" / "lm" / "mc.png").stat().st_size > 0
    for argv, message in [
        ([str(checkpoint.parent.parent / "none-p0-seed1" / "best.pt")], "trained without dropout"),
        ([str(tmp_path / "missing.pt")], "cannot read checkpoint"),
        ([str(checkpoint), "--passes", "0,3"], "--passes needs counts >= 1"),
    ]:
        with pytest.raises(SystemExit):
            mc.main(argv + flags)
        assert message in capsys.readouterr().err


def test_mc_over_seeds_row_uses_the_largest_common_pass_count_and_a_t_interval():
    from benchmarks.tables import mc_table

    def entry(seed, standard, curve, variant="zaremba"):
        return {"label": "cpu", "variant": variant, "dropout": 0.2, "seed": seed, "passes": sorted(curve),
                "standard": {s: {"ppl": standard} for s in mc_table.SPLITS},
                "mc": {s: {str(k): {"ppl": v} for k, v in curve.items()} for s in mc_table.SPLITS}}

    entries = [entry(1, 100.0, {1: 110.0, 10: 99.0, 20: 98.0}), entry(2, 102.0, {1: 112.0, 10: 100.0}),
               entry(3, 90.0, {1: 95.0, 10: 89.0}, variant="naive")]  # one seed: no row
    lines = mc_table.over_seeds(LanguageModelTask, entries)
    rows = [line for line in lines if line.startswith("| cpu |")]
    assert len(rows) == 2 and all("naive" not in row for row in rows)
    # K = 10, the largest both seeds reached; differences -1 and -2: t(1) = 12.706 * 0.7071 / sqrt(2) = 6.35
    assert rows[0] == ("| cpu | zaremba | 0.2 | 1,2 | valid | 101.00 ± 1.41 | 10 | 99.50 ± 0.71 | -1.50 | "
                       "[-7.85, +4.85] | 2 / 2 | 10 |")
