"""core.graphs: training and evaluation replayed from captured steps (--cuda-graphs).

On CPU the capture is EagerCapture (same contract: static inputs copied in, state carried inside the step,
outputs overwritten in place by every replay), so everything but the CUDA capture itself is checked here; the
last tests run the real capture when a GPU is present."""
import pytest
import torch

from core import Trainer, TrainConfig
from core.graphs import EagerCapture, StepGraphs, check_graphable
from core.precision import set_fp32_math
from core.schemes import Scheme
from tasks.lm.task import LanguageModelTask
from tasks.mt.task import TranslationTask
from conftest import write_tiny_ptb


def lm_trainer(data, tmp_path, name, scheme="zaremba", device="cpu", **graphs):
    config = dict(LanguageModelTask.presets["tiny"], seed=1, epochs=2, scheme=scheme,
                  dropout=0.0 if scheme == "none" else 0.3, decay_start=1, lr_decay=2.0)
    task = LanguageModelTask(config, data, download=False, custom_data=True).load_data()
    torch.manual_seed(1)
    model = task.build_model()
    return Trainer(task, model, TrainConfig.from_dict(config), tmp_path / name, device, progress=False,
                   tensorboard=False, **graphs)


def test_replayed_training_and_evaluation_equal_the_eager_run(tmp_path):
    """Same seed, same dropout masks (the captured step draws them in the same order), same numbers: every
    epoch's metrics and the final weights; most steps were replays, the short last chunk ran eagerly."""
    data = write_tiny_ptb(tmp_path / "data")
    eager = lm_trainer(data, tmp_path, "eager")
    graphed = lm_trainer(data, tmp_path, "graphed", cuda_graphs=True, graph_capture=EagerCapture)
    a, b = eager.fit(), graphed.fit()
    for ea, eb in zip(a["history"], b["history"]):
        for key in ("train_ppl", "valid_ppl"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-6), key
    assert b["metrics"]["test_ppl"] == pytest.approx(a["metrics"]["test_ppl"], rel=1e-6)
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters()):
        torch.testing.assert_close(q, p, msg=name)
    steps = graphed.task.num_batches("train")
    graphs = graphed.graphs
    # per epoch: 2 warm-up steps, then replays; the lr changes each epoch, so each epoch captures its own step
    assert graphs.replays > steps and graphs.captures >= 3
    assert [k[1] for k in graphs.graphs if k[0] == "train"] == [graphed.config.lr_at(2)]  # the last lr's only


def test_a_replay_overwrites_the_outputs_of_the_last_one(tmp_path):
    """What a CUDA graph does to its outputs: the trainer must add them up before the next step, which the
    equality above proves it does; here the emulation itself is held to it."""
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "g", cuda_graphs=True, graph_capture=EagerCapture)
    trainer.graphs.warmup = 1
    batches = list(trainer.task.batches("train", "cpu"))
    trainer.model.train()
    first = trainer.train_step(batches[0], None)  # the warm-up (and no state yet): eager
    second = trainer.train_step(batches[1], first.state)
    saved = second.nll.clone()
    third = trainer.train_step(batches[2], second.state)
    assert third.nll is second.nll and not torch.equal(third.nll, saved)
    assert third.state is second.state  # the static state: carried inside the step


def test_the_learning_rate_is_part_of_what_a_graph_captures(tmp_path):
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "g", cuda_graphs=True, graph_capture=EagerCapture)
    graphs, batches = trainer.graphs, list(trainer.task.batches("train", "cpu"))[:6]
    trainer.model.train()
    state = None
    for lr in (1.0, 0.5):
        trainer.optimizer.param_groups[0]["lr"] = lr
        for batch in batches:
            state = trainer.train_step(batch, state).state
    assert graphs.captures == 2 and [k[1] for k in graphs.graphs] == [0.5]


def test_a_state_of_another_shape_runs_eagerly(tmp_path):
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "g", cuda_graphs=True, graph_capture=EagerCapture)
    trainer.graphs.warmup = 1
    batch = next(iter(trainer.task.batches("train", "cpu")))
    trainer.model.train()
    state = trainer.train_step(batch, None).state
    trainer.train_step(batch, state)
    replays = trainer.graphs.replays
    odd = tuple(s[:, :1].clone() for s in state)  # one stream instead of the batch's
    with pytest.raises(RuntimeError):  # the eager step itself refuses the mismatched state...
        trainer.train_step(batch, odd)
    assert trainer.graphs.replays == replays  # ...instead of a replay silently reading the wrong one


def test_graphs_are_refused_with_a_reason(tmp_path):
    data = write_tiny_ptb(tmp_path / "data")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        lm_trainer(data, tmp_path, "cpu", cuda_graphs=True)
    mt = TranslationTask(dict(TranslationTask.presets["tiny"], seed=1, scheme="zaremba"))
    mt.synthetic_data(batches=2)

    class Stub:
        task, device, model = mt, torch.device("cpu"), torch.nn.Module()
    with pytest.raises(ValueError, match="graph_safe"):
        StepGraphs(Stub(), None, None, capture=EagerCapture)


def test_a_capture_always_follows_an_eager_warm_up_step(tmp_path):
    """cuDNN re-seeds its dropout state at the first dropout step after a seed, with a read back to the host that
    must never fall inside a capture: a warm-up of 0 steps is refused, at construction and later."""
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "g", cuda_graphs=True, graph_capture=EagerCapture)
    with pytest.raises(ValueError, match="at least 1 eager step"):
        trainer.graphs.warmup = 0
    with pytest.raises(ValueError, match="at least 1 eager step"):
        StepGraphs(trainer, trainer._train_step, trainer._eval_step, warmup=0, capture=EagerCapture)
    assert trainer.graphs.warmup == 2


def test_the_model_mode_is_part_of_what_a_graph_captures(tmp_path):
    """An evaluation step captured with dropout off is never replayed with the model in training mode (MC
    dropout evaluates so): each mode gets its own graph."""
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "g", cuda_graphs=True, graph_capture=EagerCapture)
    batches = list(trainer.task.batches("valid", "cpu"))[:4]
    with torch.no_grad():
        for training in (False, True):
            trainer.model.train(training)
            state = None
            for batch in batches:
                state = trainer.eval_step(batch, state).state
    assert trainer.graphs.captures == 2
    assert sorted(key[-1] for key in trainer.graphs.graphs) == [False, True]


class MaskedRecurrentWeight(Scheme):
    """A fused scheme that masks W_hh and does not say that it swaps it: swaps_parameters is derived."""
    name = "masked-w-hh"

    def recurrent_weight(self, w_hh, training):
        return w_hh * 0.5


def test_graphs_refuse_schemes_that_swap_parameters(tmp_path):
    """weightdrop swaps a masked W_hh into nn.LSTM's call (functional_call), and nn.LSTM re-flattens its weights
    into memory allocated inside the capture: replays would read freed memory. Refused by name, by scheme object
    and through the trainer, with the fix."""
    task = LanguageModelTask
    assert check_graphable(task, "cpu", capture=EagerCapture, schemes=["zaremba", "none"]) is None
    problem = check_graphable(task, "cpu", capture=EagerCapture, schemes=["zaremba", "weightdrop"])
    assert "'weightdrop' swaps parameters" in problem and "drop it from --variants" in problem
    assert "swaps parameters" in check_graphable(task, "cpu", capture=EagerCapture,
                                                 schemes=[MaskedRecurrentWeight(0.3)])
    data = write_tiny_ptb(tmp_path / "data")
    with pytest.raises(ValueError, match="'weightdrop' swaps parameters"):
        lm_trainer(data, tmp_path, "wd", scheme="weightdrop", cuda_graphs=True, graph_capture=EagerCapture)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def ieee_fp32(fp32_switches):
    """The CUDA tests compare steps in IEEE fp32 (torch's default for cuDNN's LSTM is TF32)."""
    set_fp32_math(tf32=False)


def between_layer_losses(tmp_path, device, capture, p):
    """The loss of 4 replays of one training step from one fixed state with lr 0, where the only dropout is the
    mask between the LSTM's two layers (nn.LSTM's own, cuDNN's on a GPU): scheme none, that mask set by hand."""
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, f"between-{p}", scheme="none", device=device, cuda_graphs=True,
                         graph_capture=capture)
    assert trainer.model.rnn.lstm.num_layers == 2
    trainer.model.rnn.lstm.dropout = p
    trainer.graphs.warmup = 1
    batch = next(iter(trainer.task.batches("train", device)))
    trainer.model.train()
    trainer.optimizer.param_groups[0]["lr"] = 0.0
    fixed = tuple(s.clone() for s in trainer.train_step(batch, None).state)
    losses = [float(trainer.train_step(batch, fixed).nll) for _ in range(4)]
    assert trainer.graphs.replays == 4
    return losses


def test_the_between_layer_mask_alone_changes_the_loss_of_a_replay(tmp_path):
    """The CUDA test below, with the eager stand-in: with p=0 every replay gives one loss, so a change comes from
    the mask between the layers alone."""
    assert len(set(between_layer_losses(tmp_path, "cpu", EagerCapture, 0.0))) == 1
    assert len(set(between_layer_losses(tmp_path, "cpu", EagerCapture, 0.5))) == 4


@cuda
def test_cuda_graphs_equal_eager_without_dropout(tmp_path, ieee_fp32):
    data = write_tiny_ptb(tmp_path / "data")
    a = lm_trainer(data, tmp_path, "eager", scheme="none", device="cuda").fit()
    graphed = lm_trainer(data, tmp_path, "graphed", scheme="none", device="cuda", cuda_graphs=True)
    b = graphed.fit()
    assert graphed.graphs.replays > 0
    for ea, eb in zip(a["history"], b["history"]):
        assert eb["train_ppl"] == pytest.approx(ea["train_ppl"], rel=1e-4)
        assert eb["valid_ppl"] == pytest.approx(ea["valid_ppl"], rel=1e-4)


@cuda
def test_cuda_graphs_draw_fresh_dropout_masks_and_learn(tmp_path, ieee_fp32):
    data = write_tiny_ptb(tmp_path / "data")
    trainer = lm_trainer(data, tmp_path, "graphed", device="cuda", cuda_graphs=True)
    trainer.graphs.warmup = 1
    batch = next(iter(trainer.task.batches("train", "cuda")))
    trainer.model.train()
    trainer.optimizer.param_groups[0]["lr"] = 0.0  # the weights stay and every replay starts from one state:
    fixed = tuple(s.clone() for s in trainer.train_step(batch, None).state)  # only the masks can change the loss
    losses = [float(trainer.train_step(batch, fixed).nll) for _ in range(4)]
    assert trainer.graphs.replays == 4 and len(set(losses)) == 4
    result = lm_trainer(data, tmp_path, "fit", device="cuda", cuda_graphs=True).fit()
    assert result["history"][-1]["valid_ppl"] < result["history"][0]["valid_ppl"]


@cuda
def test_cuda_graphs_draw_a_fresh_cudnn_between_layer_mask_on_every_replay(tmp_path, ieee_fp32):
    """cuDNN's inter-layer dropout, isolated (the input and output masks would make the losses differ anyway)."""
    assert len(set(between_layer_losses(tmp_path, "cuda", None, 0.0))) == 1
    assert len(set(between_layer_losses(tmp_path, "cuda", None, 0.5))) == 4


def test_the_commands_take_cuda_graphs_and_refuse_them_with_the_fix(tiny_ptb, tmp_path, monkeypatch, capsys):
    from benchmarks import run, speed
    import core.graphs

    monkeypatch.setenv("RNNREG_DATA_DIR", str(tiny_ptb))
    common = ["--task", "lm", "--preset", "tiny", "--device", "cpu", "--custom-data", "--no-progress",
              "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):
        run.main(common + ["--cuda-graphs"])
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--task", "mt", "--preset", "tiny", "--cuda-graphs"])
    assert "graph_safe" in capsys.readouterr().err
    # the CPU stand-in for the capture: the flag goes through to the trainer and into the recorded config
    monkeypatch.setattr(core.graphs, "CudaCapture", EagerCapture)
    run.main(common + ["--cuda-graphs", "--variants", "zaremba"])
    import json
    [entry] = json.loads((tmp_path / "results" / "lm" / "tiny.json").read_text())
    assert entry["config"]["cuda_graphs"] is True
    speed.main(["--task", "lm", "--preset", "tiny", "--device", "cpu", "--cuda-graphs", "--variants", "zaremba",
                "--steps", "3", "--repeats", "1", "--no-memory", "--out", str(tmp_path / "results")])
    table = (tmp_path / "results" / "lm" / "speed.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert {"reference", "zaremba", "zaremba+graphs"} <= set(rows) and "vs reference" in table
