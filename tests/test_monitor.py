"""Watching a run: log.jsonl lines every few steps, TensorBoard event files read back, a progress bar that
names the run, prints plain lines into logs and tells the real rate after a resume."""
import io
import json

import pytest

from conftest import write_tiny_ptb
from core import Trainer, TrainConfig
from core.monitor import PlainBar
from core.utils import seed_everything
from tasks.lm.task import LanguageModelTask


def lm_trainer(tmp_path, run_dir, **kwargs):
    data = tmp_path / "data" if (tmp_path / "data").exists() else write_tiny_ptb(tmp_path / "data")
    config = dict(LanguageModelTask.presets["tiny"], seed=1, epochs=2, scheme="zaremba", dropout=0.3)
    task = LanguageModelTask(config, data, download=False, custom_data=True).load_data()
    seed_everything(1)
    train = TrainConfig.from_dict({**config, "log_interval": 5})
    return Trainer(task, task.build_model(), train, run_dir, "cpu", progress=False, **kwargs)


def test_log_jsonl_has_step_lines_and_tensorboard_has_the_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = lm_trainer(tmp_path, tmp_path / "run", label="lm/tiny zaremba p=0.3 seed 1")
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    per_epoch = trainer.task.num_batches("train")
    assert [r["step"] for r in steps if r["epoch"] == 1] == list(range(5, per_epoch + 1, 5))
    assert {"train_ppl", "lr", "tok_s", "grad_norm", "global_step"} <= set(steps[0])
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"step/train_ppl", "step/lr", "step/tok_s", "step/grad_norm", "ppl/train", "ppl/valid"} <= scalars
    assert [e.step for e in events.Scalars("ppl/valid")] == [1, 2]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_no_tensorboard_writes_no_event_files(tmp_path):
    lm_trainer(tmp_path, tmp_path / "run", tensorboard=False).fit()
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "log.jsonl").exists()


def test_the_plain_bar_prints_a_line_every_tenth_with_the_rate_of_this_process():
    out = io.StringIO()
    bar = PlainBar(total=100, desc="lm/tiny zaremba p=0.3 seed 1 epoch 2/3 train", initial=60, stream=out)
    for _ in range(40):
        bar.update()
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["70/100", "80/100", "90/100", "100/100"]
    assert all(line.startswith("lm/tiny zaremba p=0.3 seed 1 epoch 2/3 train: ") for line in lines)
    assert "\r" not in out.getvalue()
    rate = float(lines[-1].split("%), ")[1].split(" it/s")[0])
    assert rate > 0  # counted from the 60 steps it resumed at, not from 0


def test_a_resumed_run_notes_where_it_continued(tmp_path):
    lm_trainer(tmp_path, tmp_path / "run").fit()
    config = json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]
    (tmp_path / "run" / "result.json").unlink()  # a run stopped during its final evaluation
    assert lm_trainer(tmp_path, tmp_path / "run").fit(resume=True)["metrics"] == pytest.approx(config)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"kind": "resumed", "epoch": 3, "step": 0} in lines


def test_a_decoding_task_logs_example_outputs_each_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_mt import tiny_config, write_tiny_multi30k
    from tasks.mt.task import TranslationTask

    data = write_tiny_multi30k(tmp_path / "data")
    config = tiny_config(epochs=1)
    task = TranslationTask(config, data, download=False, custom_data=True).load_data()
    seed_everything(1)
    Trainer(task, task.build_model(), TrainConfig.from_dict(config), tmp_path / "run", "cpu", progress=False).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "examples/valid/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("examples/valid/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.count("valid item") == 3
