"""Dropout schemes for the stacked LSTM, one small class each.

A scheme says what it does to each kind of connection of core.lstm.DropoutLSTM, through hooks the LSTM calls:
  begin            once per forward pass; returns the pass's `masks` (None, or masks shared by every time step);
  drop_input       input -> layer 1 (the whole input sequence, before the recurrence);
  drop_between     layer l-1 -> layer l (the lower layer's output sequence);
  drop_output      top layer -> output (the output sequence, e.g. into the softmax);
  recurrent_weight each layer's hidden-to-hidden matrix W_hh, once per forward pass (DropConnect);
  recurrent_mask   the mask R_t on h_{t-1} as it enters step t, for all steps of a layer at once;
  zoneout_masks    the probabilities (A_t, B_t) that c and h keep their previous values (zoneout).
The last two act inside the recurrence, as masks of core.recurrence (whose hand-written backward pass makes the
per-step path fast). `fused` says whether the scheme can run as one nn.LSTM call (cuDNN on GPU): nn.LSTM's own
inter-layer dropout is then the layer l-1 -> l mask, and W_hh may be swapped for a masked copy for the call, so
only schemes that leave recurrent_mask and zoneout_masks alone can use it. `swaps_parameters` says that a scheme
swaps a masked W_hh into that call (torch.func.functional_call), which CUDA graphs cannot capture (core.graphs
refuses it); it defaults to True for a fused scheme that overrides recurrent_weight.

Add a scheme by subclassing Scheme and decorating it with @register_scheme; the runner's --variants then
accepts its name.
"""
import torch
import torch.nn.functional as F

from core.utils import defined_in

SCHEMES = {}  # name -> Scheme subclass


def register_scheme(cls):
    if cls.name in SCHEMES and SCHEMES[cls.name] is not cls:
        first, second = defined_in(SCHEMES[cls.name]), defined_in(cls)
        raise ValueError(f"dropout scheme {cls.name!r} is registered twice ({first} and {second}): rename one of them")
    SCHEMES[cls.name] = cls
    return cls


def make_scheme(name, p, zoneout_cell=None):
    """The scheme `name` with rate p; `zoneout_cell`: zoneout's rate for the cells when it differs from p."""
    if name not in SCHEMES:
        raise ValueError(f"unknown dropout scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    for what, value in (("dropout", p), ("zoneout_cell", zoneout_cell)):
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {value}")
    if name == "zoneout":
        return SCHEMES[name](p, cell_p=zoneout_cell)
    return SCHEMES[name](p)


class Scheme:
    name = ""
    fused = True  # the nn.LSTM path can run it
    eval_fused = False  # a stepwise scheme that is plain nn.LSTM in eval mode (no mask there) evaluates fused
    uses_p = True  # False: the scheme ignores p (no dropout at all)
    row_masks = True  # every batch row draws its own masks (False: one mask per forward pass, shared by the rows)
    swaps_parameters = False  # the fused call runs with a masked copy of W_hh swapped in (see the module docstring)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "swaps_parameters" not in cls.__dict__:  # a new scheme that masks W_hh on the fused path swaps it
            cls.swaps_parameters = cls.fused and cls.recurrent_weight is not Scheme.recurrent_weight

    def __init__(self, p):
        self.p = float(p) if self.uses_p else 0.0

    @property
    def between_p(self):
        """p of nn.LSTM's inter-layer dropout on the fused path."""
        return 0.0

    def begin(self, x, num_layers, hidden_size, training):
        """Start a forward pass over x (B, T, input_size); returns what the other hooks get as `masks`."""
        return None

    def drop_input(self, x, training, masks):
        return x

    def drop_between(self, x, training, masks, layer):
        return x

    def drop_output(self, y, training, masks):
        return y

    def recurrent_weight(self, w_hh, training):
        return w_hh

    def recurrent_mask(self, h, steps, training, masks, layer):
        """R for `steps` steps of a layer: None, (B, H) for every step or (T, B, H); h is h_0 (for shape)."""
        return None

    def zoneout_masks(self, h, steps, training):
        """None, or (keep_h, keep_c), each broadcastable to (T, B, H): the weight of the previous value."""
        return None

    def __repr__(self):
        return f"{self.name}(p={self.p:g})"


def dropout(x, p, training):
    if p == 0 or not training:
        return x
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return x * uniform_mask(x, p)
    return F.dropout(x, p, training)


def uniform_mask(like, p):
    """An inverted-dropout mask (0 or 1 / (1 - p)) of like's shape from uniform draws: on a CPU torch's bernoulli_
    draws serially (4x the time of uniform_ on an AMD EPYC; MKL's generator is used on Intel only). Used under CPU
    autocast alone (bf16 training), so that fp32 runs keep F.dropout's random stream and their committed numbers."""
    keep = torch.rand(like.shape, device=like.device) < 1 - p
    return keep.to(like.dtype if like.is_floating_point() else torch.float32) * (1 / (1 - p))


def sequence_mask(like, p):
    """One inverted-dropout mask per sequence, (B, 1, D), shared by every time step of `like` (B, T, D)."""
    return torch.empty(like.size(0), 1, like.size(-1), device=like.device, dtype=like.dtype).bernoulli_(1 - p) / (1 - p)


def embedding_dropout(weight, ids, p, training):
    """Word-type (embedding) dropout, Gal & Ghahramani (2016) sec. 4: drop whole rows of the embedding matrix, so
    every occurrence of a dropped word in the batch is zeroed, and scale the kept rows by 1 / (1 - p)."""
    if not training or p == 0:
        return F.embedding(ids, weight)
    keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(ids, weight * keep)


@register_scheme
class NoDropout(Scheme):
    """No dropout anywhere (the paper's non-regularized baseline)."""
    name = "none"
    uses_p = False


@register_scheme
class Zaremba(Scheme):
    """Zaremba et al. (2014): a fresh mask on every non-recurrent connection at every time step, never on
    h_{t-1} -> h_t, so information is corrupted L+1 times whatever its distance in time:
        h_t^l = LSTM(D(h_t^{l-1}), h_{t-1}^l),  y_t = softmax(W D(h_t^L))."""
    name = "zaremba"

    @property
    def between_p(self):
        return self.p

    def drop_input(self, x, training, masks):
        return dropout(x, self.p, training)

    def drop_between(self, x, training, masks, layer):
        return dropout(x, self.p, training)

    def drop_output(self, y, training, masks):
        return dropout(y, self.p, training)


@register_scheme
class Naive(Zaremba):
    """The "standard dropout" the paper argues against: the zaremba masks plus a fresh mask on h_{t-1} at every
    time step, which corrupts information once per step it travels: h_t^l = LSTM(D(h_t^{l-1}), D(h_{t-1}^l))."""
    name = "naive"
    fused = False
    eval_fused = True  # no mask at evaluation: the same function as nn.LSTM

    def recurrent_mask(self, h, steps, training, masks, layer):
        if not training or self.p == 0:
            return None
        return h.new_empty(steps, *h.shape).bernoulli_(1 - self.p) / (1 - self.p)


@register_scheme
class Variational(Scheme):
    """Gal & Ghahramani (2016), "A Theoretically Grounded Application of Dropout in Recurrent Neural Networks":
    one mask per sequence, sampled at the start of the forward pass and reused at every time step, on the
    inputs, between layers, on the output and on the recurrent state:
        h_t^l = LSTM(z_x^l * h_t^{l-1}, z_h^l * h_{t-1}^l),  y_t = softmax(W (z_y * h_t^L)),
    every z ~ Bernoulli(1 - p) / (1 - p), the same p for all. (Word-type embedding dropout, the paper's other
    ingredient, is the task option `embed_dropout`: core.schemes.embedding_dropout.) A new forward pass (a new
    BPTT segment of the LM) draws new masks. Stepwise only: the recurrent mask acts inside the recurrence."""
    name = "variational"
    fused = False
    eval_fused = True

    def begin(self, x, num_layers, hidden_size, training):
        if not training or self.p == 0:
            return None
        hidden = x.new_empty(x.size(0), 1, hidden_size)
        return {"input": sequence_mask(x, self.p), "output": sequence_mask(hidden, self.p),
                "between": [sequence_mask(hidden, self.p) for _ in range(num_layers - 1)],
                "recurrent": [sequence_mask(hidden, self.p)[:, 0] for _ in range(num_layers)]}

    def drop_input(self, x, training, masks):
        return x if masks is None else x * masks["input"]

    def drop_between(self, x, training, masks, layer):
        return x if masks is None else x * masks["between"][layer - 1]

    def drop_output(self, y, training, masks):
        return y if masks is None else y * masks["output"]

    def recurrent_mask(self, h, steps, training, masks, layer):
        return None if masks is None else masks["recurrent"][layer]


@register_scheme
class WeightDrop(Zaremba):
    """Merity, Keskar & Socher (2017), AWD-LSTM ("Regularizing and Optimizing LSTM Language Models"): DropConnect
    on every hidden-to-hidden matrix, one mask per forward pass shared by all time steps, on top of the paper's
    non-recurrent dropout (the same p for both):
        h_t^l = LSTM(D(h_t^{l-1}), h_{t-1}^l; W_hh^l * M^l),  M^l ~ Bernoulli(1 - p) / (1 - p).
    The parameters themselves are never masked: the masked copy is passed to the call (fused path via
    torch.func.functional_call), so eval mode and the optimizer always see the real weights."""
    name = "weightdrop"
    row_masks = False
    swaps_parameters = True

    def recurrent_weight(self, w_hh, training):
        return dropout(w_hh, self.p, training)


@register_scheme
class Zoneout(Scheme):
    """Krueger et al. (2016), "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations": at every
    step each unit of h and of c keeps its previous value with probability p instead of taking the new one:
        c_t = d_c * c_{t-1} + (1 - d_c) * c~_t,   h_t = d_h * h_{t-1} + (1 - d_h) * h~_t,
    d_h ~ Bernoulli(p) and d_c ~ Bernoulli(p_c), p_c = `cell_p` (default p: one rate for both; the paper's
    PTB LSTMs use p_c = 0.5, p_h = 0.05); at evaluation each d is replaced by its expectation. No other
    dropout (the zoneout paper's own setting). Stepwise only."""
    name = "zoneout"
    fused = False

    def __init__(self, p, cell_p=None):
        super().__init__(p)
        self.cell_p = self.p if cell_p is None else float(cell_p)

    def __repr__(self):
        return f"zoneout(p={self.p:g}, cell_p={self.cell_p:g})"

    def zoneout_masks(self, h, steps, training):
        if self.p == 0 and self.cell_p == 0:
            return None
        if not training:
            return h.new_full((), self.p), h.new_full((), self.cell_p)
        return tuple((h.new_empty(steps, *h.shape).uniform_() < rate).to(h.dtype) for rate in (self.p, self.cell_p))
