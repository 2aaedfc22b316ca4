import json
import math

import pytest
import torch

from core import StepOutput, Trainer, TrainConfig
from conftest import write_tiny_ptb
from core.utils import seed_everything
from tasks.lm.task import LanguageModelTask, PRESETS


def make_trainer(data_root, config, run_dir, **overrides):
    config = {**config, **overrides}
    task = LanguageModelTask(config, data_root, download=False, custom_data=True).load_data()
    seed_everything(config["seed"])
    return Trainer(task, task.build_model(), TrainConfig.from_dict(config), run_dir, "cpu", progress=False)


def test_schedule_is_constant_then_divided_every_epoch():
    small = TrainConfig.from_dict(PRESETS["small"])
    assert [small.lr_at(e) for e in range(1, 8)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    medium = TrainConfig.from_dict(PRESETS["medium"])
    assert medium.lr_at(6) == 1 and medium.lr_at(7) == pytest.approx(1 / 1.2) and medium.lr_at(9) == pytest.approx(1 / 1.2 ** 3)


def test_training_lowers_the_loss_on_a_tiny_corpus(tiny_config, tmp_path):
    data = write_tiny_ptb(tmp_path / "data", lines=(1500, 40, 40))
    trainer = make_trainer(data, tiny_config, tmp_path / "run", epochs=3, hidden=32, decay_start=3, dropout=0.1,
                           max_tokens=None)  # the whole corpus, not the smoke test's first 2,000 tokens
    before = trainer.evaluate("valid")["ppl"]
    result = trainer.fit()
    after = result["metrics"]["valid_ppl"]
    assert after < 0.4 * before  # uniform over 23 words is 23; each word has 2 successors
    assert result["metrics"]["test_ppl"] < 0.4 * before
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and epochs[-1]["train_ppl"] < epochs[0]["train_ppl"]
    assert {"checkpoint.pt", "best.pt", "result.json", "log.jsonl"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_loss_is_summed_over_time_and_averaged_over_batch(tiny_ptb, tiny_config):
    task = LanguageModelTask(tiny_config, tiny_ptb, download=False, custom_data=True).load_data()
    model = task.build_model()
    inputs, targets = next(iter(task.batches("train", "cpu")))
    out = task.forward(model, (inputs, targets), None)
    assert out.count == inputs.numel()
    torch.testing.assert_close(out.loss, out.nll / inputs.size(0))
    assert out.state[0].shape == (2, inputs.size(0), tiny_config["hidden"])


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tiny_ptb, tiny_config, tmp_path):
    full = make_trainer(tiny_ptb, tiny_config, tmp_path / "full", epochs=3).fit()
    make_trainer(tiny_ptb, tiny_config, tmp_path / "split", epochs=1).fit()  # "interrupted" after epoch 1
    resumed_trainer = make_trainer(tiny_ptb, tiny_config, tmp_path / "split", epochs=3)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed["history"][0] == full["history"][0] | {"wall_s": resumed["history"][0]["wall_s"]}
    for key in ("train_ppl", "valid_ppl", "test_ppl"):
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], rel=1e-6)


def test_resume_refuses_a_checkpoint_of_another_config(tiny_ptb, tiny_config, tmp_path):
    make_trainer(tiny_ptb, tiny_config, tmp_path / "run", epochs=1).fit()
    with pytest.raises(ValueError, match="cannot resume"):
        make_trainer(tiny_ptb, tiny_config, tmp_path / "run", epochs=2, lr=0.5).fit(resume=True)


class ExplodingTask(LanguageModelTask):
    def forward(self, model, batch, state):
        out = super().forward(model, batch, state)
        return StepOutput(out.loss, out.nll * float("nan"), out.count, out.state)


def test_nan_loss_stops_with_a_clear_error(tiny_ptb, tiny_config, tmp_path):
    task = ExplodingTask(tiny_config, tiny_ptb, download=False, custom_data=True).load_data()
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(tiny_config), tmp_path, "cpu", progress=False)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 1.*Lower the learning rate"):
        trainer.fit()


def test_test_split_is_read_only_after_training_and_never_picks_the_epoch(tiny_ptb, tiny_config, tmp_path):
    reads = []

    class Spy(LanguageModelTask):
        def batches(self, split, device):
            reads.append(split)
            yield from super().batches(split, device)

    config = {**tiny_config, "epochs": 3}
    task = Spy(config, tiny_ptb, download=False, custom_data=True).load_data()
    seed_everything(1)
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(config), tmp_path / "run", "cpu", progress=False)
    result = trainer.fit()
    last_valid = max(i for i, split in enumerate(reads) if split == "valid")
    assert "test" in reads and reads.index("test") > last_valid  # nothing of the test set before the choice
    valid = [r["valid_ppl"] for r in result["history"]]
    assert result["best_epoch"] == valid.index(min(valid)) + 1
    # per-item statistics for the paired tests: they add up to the test perplexity
    items = result["details"]["items"]["nll"]
    nll, count = sum(i[0] for i in items), sum(i[1] for i in items)
    assert len(items) > 1
    assert math.exp(nll / count) == pytest.approx(result["metrics"]["test_ppl"], rel=1e-3)


def test_bf16_autocast_keeps_the_loss_in_fp32_and_close_to_fp32(tiny_config, tiny_ptb):
    """The bf16 path (forward under autocast, loss and softmax in fp32) gives the fp32 loss within bf16's error."""
    from core.precision import autocast

    task = LanguageModelTask(tiny_config, tiny_ptb, download=False, custom_data=True).load_data()
    seed_everything(1)
    model = task.build_model().eval()
    # the per-step cell (equal to nn.LSTM, see test_lstm): oneDNN's fused LSTM has no bf16 kernel on CPUs
    # without native bf16, which is why such CPUs fall back to fp32 (next test)
    model.rnn.stepwise = True
    batch = next(iter(task.batches("train", "cpu")))
    with torch.no_grad():
        fp32 = task.forward(model, batch, None)
        with autocast("bf16", "cpu"):
            bf16 = task.forward(model, batch, None)
    assert bf16.nll.dtype == torch.float32 and bf16.loss.dtype == torch.float32
    assert float(bf16.nll) == pytest.approx(float(fp32.nll), rel=1e-2)
    assert float(bf16.nll) != float(fp32.nll)  # the forward pass really ran in bf16


def test_bf16_without_native_support_falls_back_to_fp32_with_one_warning(monkeypatch, tmp_path):
    import core.precision
    from core.precision import resolve_precision

    cpuinfo = tmp_path / "cpuinfo"  # a CPU without avx512_bf16/amx_bf16, read by the real /proc/cpuinfo reader
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    monkeypatch.setattr(core.precision, "CPUINFO", cpuinfo)
    with pytest.warns(UserWarning, match="no native bf16 support"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_auto_precision_is_bf16_on_a_gpu_with_bf16_and_fp32_on_cpus(monkeypatch, recwarn):
    from core.precision import resolve_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "fp32"  # no evidence on a native-bf16 CPU yet: fp32 there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "fp32"
    assert not recwarn.list  # auto never warns
