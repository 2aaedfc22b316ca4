"""What one training step produces and is configured by: StepOutput, TrainConfig, the optimizers, and the
device-side running sums of a pass (core.trainer runs the loop)."""
from dataclasses import dataclass, field, fields

import torch


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is back-propagated (its scaling is the task's choice)
    nll: torch.Tensor  # summed negative log-likelihood over the counted targets, detached
    count: int  # number of targets (tokens, frames) in the batch
    state: object = None  # recurrent state to carry to the next batch (stateful tasks)
    extra: dict = field(default_factory=dict)  # other summed statistics, e.g. correct frames
    norm: float = None  # the loss's denominator (sentences, streams, scored frames): weights ranks under DDP


@dataclass
class TrainConfig:
    epochs: int
    lr: float = 1.0
    decay_start: int = 0  # lr stays constant for this many epochs
    lr_decay: float = 1.0  # then is divided by this every epoch
    clip: float = 5.0  # max global gradient norm
    seed: int = 1
    optimizer: str = "sgd"  # "sgd" (the paper) or "adam"
    precision: str = "fp32"  # "bf16": forward passes under bf16 autocast; loss, softmax and metrics in fp32
    log_interval: int = 50  # steps between progress updates (and NaN checks)

    @classmethod
    def from_dict(cls, cfg, **overrides):
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in cfg.items() if k in names}, **overrides})

    def lr_at(self, epoch):
        """Learning rate for 1-based `epoch`."""
        return self.lr / self.lr_decay ** max(epoch - self.decay_start, 0)


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def make_optimizer(name, params, lr, device="cpu", capturable=False):
    """The optimizer; on CUDA its fused kernel (one launch for all parameters: the small-batch LM is bound by
    kernel launches there). `capturable`: its step may be captured in a CUDA graph (Adam keeps its step count on
    the device then; SGD needs nothing)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    options = {"fused": True} if torch.device(device).type == "cuda" else {}
    if capturable and name == "adam" and torch.device(device).type == "cuda":
        options["capturable"] = True
    return OPTIMIZERS[name](params, lr=lr, **options)


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


class Totals:
    """Sums step statistics on the device; syncs only when read."""

    def __init__(self):
        self.nll, self.count, self.extra = 0.0, 0, {}

    @classmethod
    def from_dict(cls, saved):
        totals = cls()
        totals.restore(saved)
        return totals

    def restore(self, saved):
        self.nll, self.count = saved["nll"], saved["count"]
        self.extra = {k: v for k, v in saved.items() if k not in ("nll", "count")}

    def add(self, out):
        self.nll = self.nll + out.nll
        self.count += out.count
        for k, v in out.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v

    def mean_nll(self):
        return float(self.nll) / max(self.count, 1)

    def as_dict(self):
        return {"nll": float(self.nll), "count": self.count, **{k: float(v) for k, v in self.extra.items()}}
