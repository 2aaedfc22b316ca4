"""Never lose work: checkpoints within an epoch, SIGTERM/SIGINT, failed checkpoint writes. A resumed run must end
with exactly the metrics and outputs of an uninterrupted one (stateful LM streams and bucketed MT batches)."""
import os
import signal

import pytest
import torch

from core import Trainer, TrainConfig
from core.interrupt import Interrupted
from core.utils import seed_everything
from conftest import write_tiny_ptb
from tasks.lm.task import LanguageModelTask
from tasks.mt.task import TranslationTask
from tasks.caption.task import CaptionTask
from tasks.speech.task import SpeechTask
from test_captions_data import write_flickr8k
from test_mt import tiny_config as mt_config, write_tiny_multi30k
from test_speech import write_tiny_fsdd

LM = dict(LanguageModelTask.presets["tiny"], seed=3, epochs=2, dropout=0.3, scheme="zaremba")


def task_and_config(name, tmp_path):
    data = tmp_path / "data"
    if name == "lm":
        return LanguageModelTask, data if data.exists() else write_tiny_ptb(data), LM
    if name == "mt":
        return TranslationTask, data if data.exists() else write_tiny_multi30k(data), mt_config(
            epochs=2, scheme="variational")
    if name == "speech":
        return SpeechTask, data if data.exists() else write_tiny_fsdd(data), dict(
            SpeechTask.presets["tiny"], seed=1, epochs=2, scheme="zoneout", dropout=0.2)
    return CaptionTask, data if data.exists() else write_flickr8k(data), dict(
        CaptionTask.presets["tiny"], seed=1, epochs=2, scheme="zaremba", dropout=0.3)


def trainer(name, tmp_path, run_dir, every=None):
    cls, data, config = task_and_config(name, tmp_path)
    task = cls(config, data, download=False, custom_data=True, cache_dir=tmp_path / "cache").load_data()
    seed_everything(config["seed"])
    return Trainer(task, task.build_model(), TrainConfig.from_dict(config), run_dir, "cpu", progress=False,
                   checkpoint_every=every)


def stop_at(monkeypatch, step, how):
    """Make the `step`-th training step of the process end the run: a crash (nothing saved then) or a real
    SIGTERM sent to this process (the trainer saves, then stops)."""
    original, calls = Trainer.train_step, {"n": 0}

    def train_step(self, batch, state=None):
        calls["n"] += 1
        if calls["n"] == step:
            if how == "crash":
                raise RuntimeError("killed")
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, state)

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.filterwarnings("ignore:Flickr8k. skipping")
@pytest.mark.parametrize("name, how, step", [("lm", "crash", 3), ("lm", "sigterm", 11), ("mt", "crash", 3),
                                             ("mt", "sigterm", 11), ("speech", "crash", 2), ("caption", "sigterm", 2)])
def test_resume_within_an_epoch_repeats_the_uninterrupted_run_exactly(name, how, step, tmp_path, monkeypatch):
    full = trainer(name, tmp_path, tmp_path / "full").fit()
    steps_per_epoch = trainer(name, tmp_path, None).task.num_batches("train")
    assert step < 2 * steps_per_epoch and step % steps_per_epoch  # the interruption falls within an epoch
    with monkeypatch.context() as patch:
        stop_at(patch, step, how)
        with pytest.raises(RuntimeError if how == "crash" else Interrupted):
            trainer(name, tmp_path, tmp_path / "cut", every=0.0).fit()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    if how == "sigterm" or (step - 1) % steps_per_epoch:  # the last save was within an epoch
        assert saved["within"]["step"] == (step - (how == "crash") - 1) % steps_per_epoch + 1
    resumed = trainer(name, tmp_path, tmp_path / "cut").fit(resume=True)
    assert resumed["metrics"] == full["metrics"]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in resumed["history"]] == \
           [{k: v for k, v in r.items() if k != "wall_s"} for r in full["history"]]
    for outputs in ("valid_outputs.txt", "test_outputs.txt"):
        if (tmp_path / "full" / outputs).exists():
            assert (tmp_path / "cut" / outputs).read_text() == (tmp_path / "full" / outputs).read_text()


def test_a_signal_during_the_final_evaluation_stops_and_resume_redoes_only_it(tmp_path, monkeypatch):
    full = trainer("mt", tmp_path, tmp_path / "full").fit()
    original = TranslationTask.final_metrics

    def final_metrics(self, model, split, device):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, split, device)

    with monkeypatch.context() as patch:
        patch.setattr(TranslationTask, "final_metrics", final_metrics)
        with pytest.raises(Interrupted):
            trainer("mt", tmp_path, tmp_path / "cut").fit()
    assert not (tmp_path / "cut" / "result.json").exists()
    assert trainer("mt", tmp_path, tmp_path / "cut").fit(resume=True)["metrics"] == full["metrics"]


def test_resuming_a_finished_run_reuses_its_result_and_never_reads_test_again(tmp_path, monkeypatch):
    full = trainer("lm", tmp_path, tmp_path / "run").fit()
    again = lambda *a, **k: pytest.fail("a finished run was evaluated again")  # noqa: E731
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "evaluate", again)
        assert trainer("lm", tmp_path, tmp_path / "run").fit(resume=True) == full
    result = tmp_path / "run" / "result.json"
    result.write_text(result.read_text().replace('"epoch": 2', '"epoch": 3'))  # a result.json of another run
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "evaluate", again)
        with pytest.raises(pytest.fail.Exception, match="evaluated again"):
            trainer("lm", tmp_path, tmp_path / "run").fit(resume=True)
    assert trainer("lm", tmp_path, tmp_path / "run").fit(resume=True) == full  # evaluated again: the same
    valid_only = trainer("lm", tmp_path, tmp_path / "run").fit(resume=True, test=False)
    assert not [k for k in valid_only["metrics"] if k.startswith("test_")]


KILL_AT_STEP = """
import os, signal, sys
from core.trainer import Trainer
from benchmarks import run
original, calls = Trainer.train_step, [0]
def train_step(self, batch, state=None):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: only what was on disk survives
    return original(self, batch, state)
Trainer.train_step = train_step
run.main(sys.argv[2:])
print("trained steps:", calls[0])
"""


def test_a_sigkilled_process_resumes_from_its_last_checkpoint_to_the_uninterrupted_result(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    data = write_tiny_ptb(tmp_path / "data")
    root = Path(__file__).resolve().parent.parent

    def command(name, kill_at=0, *extra):
        args = ["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--data-dir", str(data), "--custom-data",
                "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"runs-{name}"), "--no-progress",
                "--checkpoint-every", "0.0001", *extra]
        return subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(kill_at), *args], cwd=root, timeout=300,
                              capture_output=True, text=True)

    def steps(done):
        assert done.returncode == 0, done.stderr
        return int(done.stdout.rsplit("trained steps:", 1)[1])

    all_steps = steps(command("full"))
    killed = command("cut", 13)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "lm" / "tiny.json").exists()  # nothing half-written
    saved = torch.load(next((tmp_path / "runs-cut").rglob("checkpoint.pt")), weights_only=False)
    assert saved["within"] is not None or saved["epoch"] > 0  # the killed process left its progress on disk
    per_epoch = all_steps // LanguageModelTask.presets["tiny"]["epochs"]
    saved_steps = saved["epoch"] * per_epoch + (saved["within"]["step"] if saved["within"] else 0)
    assert 0 < saved_steps < 13  # checkpoints are timed: which step the last one followed depends on the clock
    assert steps(command("cut", 0, "--resume")) == all_steps - saved_steps  # it continued; it did not start again
    full, cut = (json.loads((tmp_path / n / "lm" / "tiny.json").read_text())[0] for n in ("full", "cut"))
    assert cut["metrics"] == full["metrics"] and cut["best_epoch"] == full["best_epoch"]


def test_rng_states_come_back_to_cpu_whatever_the_map_location():
    """A GPU checkpoint loaded with map_location=cuda put its RNG states on the GPU, and resuming failed
    ("RNG state must be a torch.ByteTensor"). Here the states are marked by dtype: only they change."""
    from core.utils import rng_states_on_cpu

    moved = []

    class OnDevice(torch.Tensor):  # stands in for a CUDA tensor on a machine without one
        def cpu(self):
            moved.append(self)
            return self.as_subclass(torch.Tensor)

    state = torch.get_rng_state().as_subclass(OnDevice)
    weights = torch.ones(2).as_subclass(OnDevice)
    ckpt = {"rng_cpu": state, "rng_cuda": [state], "model": {"w": weights}, "optimizer": {"state": {0: {"m": 1}}},
            "within": {"epoch_rng": state, "rng_ranks": [state, state], "state": (weights,)}}
    out = rng_states_on_cpu(ckpt)
    assert type(out["rng_cpu"]) is torch.Tensor and type(out["within"]["epoch_rng"]) is torch.Tensor
    assert all(type(t) is torch.Tensor for t in out["rng_cuda"] + out["within"]["rng_ranks"])
    assert out["model"]["w"] is weights and out["within"]["state"][0] is weights  # model and carried state stay
    assert len(moved) == 5 and out["optimizer"] == {"state": {0: {"m": 1}}}  # int keys (optimizer state) pass
    torch.set_rng_state(out["within"]["epoch_rng"])


KILL_FROM_ENV = """
import os, signal, sys
from core.trainer import Trainer
original, calls = Trainer.train_step, {"n": 0}
def train_step(self, batch, state=None):
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)  # no handler runs: only what was already on disk survives
    return original(self, batch, state)
Trainer.train_step = train_step
from benchmarks import run
run.main(sys.argv[1:])
"""


@pytest.mark.parametrize("name, preset, step", [("lm", "tiny", 14), ("mt", "tiny", 13)])
def test_a_run_killed_with_sigkill_mid_epoch_resumes_to_the_uninterrupted_result(name, preset, step, tmp_path):
    """A real process killed with SIGKILL (after mid-epoch checkpoints) and `--resume`d: the same result."""
    import json
    import subprocess
    import sys

    from test_mt import write_tiny_multi30k as write_mt

    data = write_tiny_ptb(tmp_path / "data") if name == "lm" else write_mt(tmp_path / "data")
    root = __import__("pathlib").Path(__file__).resolve().parent.parent

    def command(out, *extra, kill=None):
        argv = ["--task", name, "--preset", preset, "--variants", "zaremba", "--epochs", "2", "--data-dir", str(data),
                "--custom-data", "--no-download", "--out", str(tmp_path / out), "--run-dir", str(tmp_path / out),
                "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--device", "cpu", "--threads", "1", *extra]
        env = {**os.environ, "KILL_AT_STEP": str(kill or 10**9)}
        return subprocess.run([sys.executable, "-c", KILL_FROM_ENV, *argv], cwd=root, env=env, capture_output=True,
                              text=True, timeout=600)

    full = command("full")
    assert full.returncode == 0, full.stderr
    killed = command("cut", "--checkpoint-every", "1e-9", kill=step)
    assert killed.returncode == -signal.SIGKILL
    run_dir = next((tmp_path / "cut" / name).glob("*/zaremba-*"))
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert saved["within"] is not None and not (run_dir / "result.json").exists()  # killed within an epoch
    resumed = command("cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda r: {**r, "wall_s": 0, "history": [{k: v for k, v in h.items() if k != "wall_s"}  # noqa: E731
                                                     for h in r["history"]]}
    full_result = json.loads(next((tmp_path / "full" / name).glob("*/zaremba-*/result.json")).read_text())
    resumed_result = json.loads((run_dir / "result.json").read_text())
    assert strip(resumed_result)["metrics"] == strip(full_result)["metrics"]
    assert strip(resumed_result)["history"] == strip(full_result)["history"]
