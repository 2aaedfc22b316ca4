"""Training and evaluation steps replayed from CUDA graphs: one launch per step instead of hundreds.

The PTB LM at the paper's batch 20 x bptt 35 is bound by kernel launches on a GPU, not by arithmetic. A task
whose steps have static shapes and never read a value back to the host (`Task.graph_safe`, the LM) can have
its whole step captured once and replayed: forward, backward, gradient clipping and the (fused) optimizer
step for training, the forward pass for evaluation. Everything the step reads lives in static tensors: the
batch is copied in, the recurrent state is carried inside the graph (the step ends by copying its final state
over its initial one), and the outputs (summed NLL, extras, gradient norm) are overwritten by the next replay,
so the trainer adds them to its device-side totals at once and reads them only at log intervals.

A step is captured per key: the mode (train / eval step), the learning rate, which the optimizer bakes into
the graph (the LM's schedule changes it once per epoch: one capture per epoch), the shapes of the batch and
`model.training` (dropout on or off is baked in too). The first `warmup` steps of a key (at least one) run
eagerly (on a side stream, as torch.cuda.graphs asks), then the capture, then replays: the first dropout step
after a seed re-seeds cuDNN's dropout state with a read back to the host, which must happen in a warm-up,
never inside a capture. A batch of another shape (the LM's shorter last chunk) runs eagerly. Dropout masks are drawn afresh
at every replay (torch's generator is graph-aware, cuDNN's dropout state too), so a captured run equals the
eager one in distribution, and exactly where nothing is random (tests/test_graphs.py).

`EagerCapture` keeps the same contract without a GPU (replay = run again and overwrite the first outputs in
place): the CPU tests drive every line here but the capture itself through it.
"""
import contextlib

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from core import distributed
from core.schemes import SCHEMES
from core.step import StepOutput


class CudaCapture:
    """`fn` captured in a CUDA graph; `replay()` runs it and returns the outputs of the capture (static)."""
    needs_cuda = True

    def __init__(self, fn):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn()

    def replay(self):
        self.graph.replay()
        return self.outputs

    @staticmethod
    def side_stream(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        return _joined(stream, device)


@contextlib.contextmanager
def _joined(stream, device):
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


class EagerCapture:
    """The CudaCapture contract run eagerly: nothing runs at capture (as in a CUDA graph), each replay runs `fn`
    and writes its results into the first replay's tensors in place, as a graph's replay overwrites its outputs."""
    needs_cuda = False

    def __init__(self, fn):
        self.fn, self.outputs = fn, None

    def replay(self):
        leaves, spec = tree_flatten(self.fn())
        if self.outputs is None:
            self.outputs = tree_unflatten(leaves, spec)
        else:
            for static, new in zip(tree_flatten(self.outputs)[0], leaves):
                if isinstance(static, torch.Tensor):
                    static.copy_(new)
        return self.outputs

    @staticmethod
    def side_stream(device):
        return contextlib.nullcontext()


def check_graphable(task, device, world_size=1, capture=None, schemes=()):
    """Why graphs cannot run here (a message naming the fix), or None. `capture`: None is CudaCapture; `schemes`:
    the dropout schemes (names or Scheme objects) the steps will run."""
    capture = capture or CudaCapture
    if not getattr(task, "graph_safe", False):
        return (f"--cuda-graphs: task {task.name!r} does not declare graph_safe (static shapes, no reads back to the "
                "host in forward); drop --cuda-graphs")
    if world_size > 1:
        return "--cuda-graphs runs one process (a graph cannot hold DDP's collectives); drop it or run one process"
    if capture.needs_cuda and torch.device(device).type != "cuda":
        return f"--cuda-graphs needs a CUDA device, not {device}; drop --cuda-graphs or pass --device cuda"
    for scheme in schemes:
        scheme = SCHEMES.get(scheme) if isinstance(scheme, str) else scheme
        if getattr(scheme, "swaps_parameters", False):
            return (f"--cuda-graphs: scheme {scheme.name!r} swaps parameters for each forward pass (a masked W_hh "
                    "through functional_call; nn.LSTM then re-flattens its weights into memory allocated inside the "
                    "capture, which replays would read after it is freed); drop it from --variants or drop "
                    "--cuda-graphs")
    return None


def model_schemes(model):
    """The dropout schemes `model` runs (every module with a `scheme`: core.lstm.DropoutLSTM)."""
    return [m.scheme for m in model.modules() if getattr(m, "scheme", None) is not None]


class StepGraphs:
    """Captured train and eval steps of one Trainer (see the module docstring). `eager_train(batch, state)` and
    `eager_eval(batch, state)` are the trainer's own steps, captured as they are."""

    def __init__(self, trainer, eager_train, eager_eval, warmup=2, capture=None):
        problem = check_graphable(trainer.task, trainer.device, distributed.world_size(), capture,
                                  model_schemes(trainer.model))
        if problem:
            raise ValueError(problem)
        self.trainer, self.capture, self.warmup = trainer, capture or CudaCapture, warmup
        self.eager = {"train": eager_train, "eval": eager_eval}
        self.graphs = {}  # key -> (capture, static batch, static state)
        self.seen = {}  # key -> eager steps run so far
        self.captures = self.replays = 0  # how many graphs were captured and replayed (tests, logs)

    @property
    def warmup(self):
        return self._warmup

    @warmup.setter
    def warmup(self, steps):
        if steps < 1:
            raise ValueError(f"StepGraphs warmup must be at least 1 eager step per graph, got {steps}: the first "
                             "dropout step after a seed re-seeds cuDNN's dropout state with a read back to the host "
                             "(.item()), which must run eagerly, never inside a capture")
        self._warmup = steps

    def train_step(self, batch, state):
        return self._step("train", batch, state)

    def eval_step(self, batch, state):
        return self._step("eval", batch, state)

    def _step(self, mode, batch, state):
        leaves, _ = tree_flatten(batch)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            return self.eager[mode](batch, state)
        lr = self.trainer.optimizer.param_groups[0]["lr"] if mode == "train" else None
        key = (mode, lr, tuple((tuple(x.shape), x.dtype) for x in leaves), self.trainer.model.training)
        if key not in self.graphs:
            if self.seen.get(key, 0) < self.warmup or not self._capture(key, batch, state):
                self.seen[key] = self.seen.get(key, 0) + 1
                with self.capture.side_stream(self.trainer.device):
                    return self.eager[mode](batch, state)
        graph, static_batch, static_state = self.graphs[key]
        if not _carry(static_state, state):
            return self.eager[mode](batch, state)  # a state of another shape than the captured one
        for static, new in zip(tree_flatten(static_batch)[0], leaves):
            static.copy_(new)
        out = graph.replay()
        self.replays += 1
        if mode == "train":
            self.trainer._grad_norm = out["grad_norm"]
        return StepOutput(loss=out["loss"], nll=out["nll"], count=out["count"], state=static_state,
                          extra=out["extra"], norm=out["norm"])

    def _capture(self, key, batch, state):
        """Capture the step of `key`; False when a stateful task has no state yet to shape the static one."""
        mode, lr = key[0], key[1]
        if self.seen.get(key, 0) < 1:  # see `warmup`: cuDNN's dropout re-seed must never be captured
            raise RuntimeError(f"StepGraphs: capture of {mode} step without an eager warm-up step before it")
        static_state = _static_like(state)
        if static_state is None and self.trainer.task.stateful:
            return False
        for old in [k for k in self.graphs if k[0] == "train" and k[1] != lr]:
            del self.graphs[old]  # graphs of a past learning rate (and their memory) go before the new capture
        leaves, spec = tree_flatten(batch)
        static_batch = tree_unflatten([x.clone() for x in leaves], spec)

        def step():
            out = self.eager[mode](static_batch, static_state)
            if static_state is not None:  # the next replay starts where this one ended
                for static, new in zip(tree_flatten(static_state)[0], tree_flatten(out.state)[0]):
                    static.copy_(new)
            # count and norm are host numbers fixed by the shapes: the capture's stand for every replay
            return {"loss": out.loss, "nll": out.nll, "extra": dict(out.extra), "count": out.count, "norm": out.norm,
                    "grad_norm": self.trainer._grad_norm if mode == "train" else None}

        self.graphs[key] = (self.capture(step), static_batch, static_state)
        self.captures += 1
        return True


def _static_like(state):
    if state is None:
        return None
    leaves, spec = tree_flatten(state)
    return tree_unflatten([x.detach().clone() for x in leaves], spec)


def _carry(static_state, state):
    """Copy `state` into the static state (zeros for None: a sequence's start). False if the shapes differ."""
    if static_state is None or state is static_state:
        return True
    statics = tree_flatten(static_state)[0]
    if state is None:
        for static in statics:
            static.zero_()
        return True
    news = tree_flatten(state)[0]
    if len(news) != len(statics) or any(a.shape != b.shape for a, b in zip(statics, news)):
        return False
    for static, new in zip(statics, news):
        static.copy_(new)
    return True
