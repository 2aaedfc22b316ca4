"""Dropout schemes for the stacked LSTM, one small class each.

A scheme says what it does to each kind of connection of core.lstm.DropoutLSTM:
  inputs     the non-recurrent connections: input -> layer 1 and top layer -> output (`drop_outer`), and
             layer l-1 -> l (`drop_between`);
  recurrent  h_{t-1} -> h_t (`drop_recurrent`, called before every time step of the per-step cell);
  weights    none of today's schemes touch them.
`fused` says whether the scheme can run as one nn.LSTM call (cuDNN on GPU): nn.LSTM's own inter-layer dropout
is then the layer l-1 -> l mask, so only schemes that leave the recurrence alone can use it.

Add a scheme by subclassing Scheme and decorating it with @register_scheme; the runner's --variants then
accepts its name.
"""
import torch.nn.functional as F

SCHEMES = {}  # name -> Scheme subclass


def register_scheme(cls):
    if cls.name in SCHEMES:
        raise ValueError(f"dropout scheme {cls.name!r} is registered twice")
    SCHEMES[cls.name] = cls
    return cls


def make_scheme(name, p):
    if name not in SCHEMES:
        raise ValueError(f"unknown dropout scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return SCHEMES[name](p)


class Scheme:
    name = ""
    fused = True  # the nn.LSTM path can run it
    uses_p = True  # False: the scheme ignores p (no dropout at all)

    def __init__(self, p):
        self.p = float(p) if self.uses_p else 0.0

    @property
    def between_p(self):
        """p of nn.LSTM's inter-layer dropout on the fused path."""
        return self.p

    def drop_outer(self, x, training):
        """input -> layer 1 (x: the input sequence) and top layer -> output (x: the output sequence)."""
        return x

    def drop_between(self, x, training):
        """layer l-1 -> layer l on the per-step path (x: the lower layer's output sequence)."""
        return x

    def drop_recurrent(self, h, training):
        """h_{t-1} as it enters step t on the per-step path."""
        return h

    def __repr__(self):
        return f"{self.name}(p={self.p:g})"


def _dropout(x, p, training):
    return F.dropout(x, p, training) if p > 0 else x


@register_scheme
class NoDropout(Scheme):
    """No dropout anywhere (the paper's non-regularized baseline)."""
    name = "none"
    uses_p = False


@register_scheme
class Zaremba(Scheme):
    """Zaremba et al. (2014): a fresh mask on every non-recurrent connection at every time step, never on
    h_{t-1} -> h_t, so information is corrupted L+1 times whatever its distance in time."""
    name = "zaremba"

    def drop_outer(self, x, training):
        return _dropout(x, self.p, training)

    def drop_between(self, x, training):
        return _dropout(x, self.p, training)


@register_scheme
class Naive(Zaremba):
    """The "standard dropout" the paper argues against: the zaremba masks plus a fresh mask on h_{t-1} at every
    time step, which corrupts information once per step it travels."""
    name = "naive"
    fused = False

    def drop_recurrent(self, h, training):
        return _dropout(h, self.p, training)
