"""Stacked LSTM with a dropout scheme (core.schemes): none, the paper's zaremba, naive, ...

A scheme that leaves the recurrence alone runs as one nn.LSTM call (cuDNN on GPU): nn.LSTM's own
inter-layer dropout *is* the layer l-1 -> l mask, and the input and output masks are applied outside the
recurrence; a scheme that masks W_hh (weightdrop) passes the masked copy to that call. Other schemes (naive,
variational and zoneout act on h_{t-1} or on the state update) run each layer through core.recurrence, the
per-step equations with a hand-written backward pass.

Shapes are batch-first: x (B, T, input_size), state (h, c) each (num_layers, B, hidden_size).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.recurrence import recurrence
from core.schemes import make_scheme

STEPWISE_BF16_FROM = 512  # hidden units; see DropoutLSTM._stepwise_is_faster


def lstm_cell(x, h, c, weight, bias):
    """One LSTM step from the paper's equations (section 3.1), the reference the tests hold both paths to.

    (i, f, o, g) come from one affine map of [D(h_t^{l-1}); h_{t-1}^l]; the rows of `weight` are in
    nn.LSTM's gate order (i, f, g, o) so the same parameters drive both paths.
    """
    i, f, g, o = F.linear(torch.cat([x, h], dim=1), weight, bias).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def init_uniform(module, scale):
    """The paper's initialisation: every parameter uniform in [-scale, scale]."""
    for p in module.parameters():
        nn.init.uniform_(p, -scale, scale)


class DropoutLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers=2, dropout=0.0, scheme="zaremba", stepwise=None,
                 zoneout_cell=None):
        super().__init__()
        self.scheme = make_scheme(scheme, dropout, zoneout_cell)
        self.p = self.scheme.p
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.stepwise = (not self.scheme.fused) if stepwise is None else stepwise
        self._path_chosen = stepwise is not None
        if not self.scheme.fused and not self.stepwise:
            raise ValueError(f"the {scheme} scheme acts inside the recurrence and needs stepwise=True")
        between = self.scheme.between_p if num_layers > 1 else 0.0
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=between)

    def extra_repr(self):
        return f"scheme={self.scheme.name}, p={self.p}, stepwise={self.stepwise}"

    def forward(self, x, state=None, lengths=None):
        """Run a (padded) batch. Returns (output (B, T, H) with the top-layer dropout applied, (h_n, c_n)).

        With `lengths`, positions past a sequence's length are zero in the output and the returned state
        is the one at each sequence's last real step.
        """
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.size(0), self.hidden_size)
            state = (zeros, zeros)
        scheme, training = self.scheme, self.training
        masks = scheme.begin(x, self.num_layers, self.hidden_size, training)
        stepwise = (self.stepwise and not self._fused_eval()) or self._stepwise_is_faster(x)
        run = self._forward_stepwise if stepwise else self._forward_fused
        output, state = run(scheme.drop_input(x, training, masks), state, lengths, masks)
        output = scheme.drop_output(output, training, masks)
        if torch.is_autocast_enabled(output.device.type):
            # the fused batch-first LSTM returns a transposed view, which a following nn.Linear under autocast
            # multiplies by copying its weight once per row (bmm): 3x slower than fp32 on a CPU. Not in fp32, whose
            # products stay bit for bit those of the committed tables
            output = output.contiguous()
        return output, state

    def _fused_eval(self):
        """A stepwise scheme that is plain nn.LSTM at evaluation (naive, variational) evaluates on the fused path,
        unless the module was built with stepwise=True on purpose."""
        return not self.training and not self.scheme.fused and self.scheme.eval_fused and not self._path_chosen

    def _stepwise_is_faster(self, x):
        """bf16 training on a CPU with layers of STEPWISE_BF16_FROM units or more runs on the per-step path, with
        bf16 products: oneDNN's fused bf16 LSTM is slower there (a training step of the LM: medium 2x650 1.04x
        faster per-step, large 2x1500 1.5x; small 2x200 0.8x, bound by Python's per-step overhead;
        docs/performance.md). Evaluation stays fused (batch 1 would be bound by that overhead)."""
        return (self.training and not self._path_chosen and self.hidden_size >= STEPWISE_BF16_FROM
                and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def step(self, x_t, state=None):
        """One time step for decoding: x_t (B, input_size) -> (output (B, H), state)."""
        output, state = self.forward(x_t.unsqueeze(1), state)
        return output.squeeze(1), state

    def _forward_fused(self, x, state, lengths, masks):
        lstm = self.lstm
        weights = {}
        for layer in range(self.num_layers):
            name = f"weight_hh_l{layer}"
            w_hh = getattr(lstm, name)
            if (masked := self.scheme.recurrent_weight(w_hh, self.training)) is not w_hh:
                weights[name] = masked

        def run(inputs):
            return functional_call(lstm, weights, (inputs, state)) if weights else lstm(inputs, state)

        if lengths is None:
            return run(x)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, state = run(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.size(1))
        return output, state

    def _layer_parameters(self, layer):
        lstm = self.lstm
        return (getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}"),
                getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}"))

    def _forward_stepwise(self, x, state, lengths, masks):
        h0, c0 = state
        scheme, training, steps = self.scheme, self.training, x.size(1)
        alive = None
        if lengths is not None:
            alive = torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device)[None, :]  # (T, B)
            alive = alive[..., None].to(x.dtype)
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = scheme.drop_between(layer_input, training, masks, layer)
            w_ih, w_hh, b_ih, b_hh = self._layer_parameters(layer)
            # The input half of every step's affine map does not depend on the recurrence: one product for the
            # whole sequence (time-major), then core.recurrence runs the steps.
            pre = F.linear(layer_input.transpose(0, 1), w_ih, b_ih + b_hh)
            keep = scheme.zoneout_masks(h0[layer], steps, training) or (None, None)
            out, h, c = recurrence(pre, h0[layer], c0[layer], scheme.recurrent_weight(w_hh, training),
                                   scheme.recurrent_mask(h0[layer], steps, training, masks, layer), *keep, alive)
            layer_input = out.transpose(0, 1)
            h_n.append(h)
            c_n.append(c)
        return layer_input, (torch.stack(h_n), torch.stack(c_n))
