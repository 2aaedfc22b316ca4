"""One LSTM layer's recurrence over a sequence, with the per-step masks of the stepwise dropout schemes.

    c~_t = f * c_{t-1} + i * g,   h~_t = o * tanh(c~_t),   (i, f, g, o) from  pre_t + (R_t * h_{t-1}) W_hh^T
    c_t = A_t * c_{t-1} + (1 - A_t) * c~_t,   h_t = B_t * h_{t-1} + (1 - B_t) * h~_t,   out_t = K_t * h_t

`pre` (T, B, 4H) is the input half of the affine map (computed for the whole sequence outside), R the recurrent
mask (naive: fresh each step; variational: one per sequence), A and B the zoneout keep masks (their expectation
at evaluation), K the padding mask (a finished sequence keeps its state and outputs zeros). Every mask is None
or broadcastable to (T, B, H).

`recurrence` runs it as one autograd node with the backward pass through time written out below (BPTT): the
per-step work is a handful of fused ops instead of the ~30 autograd nodes of the step-by-step graph, which is
what makes the stepwise schemes affordable on a CPU. `reference_recurrence` is the same equations as plain
autograd code: the tests hold the two equal (outputs and gradients).
"""
import torch


def _keep_masks(keep_h, keep_c, alive):
    """Fold the padding mask into the zoneout masks: a finished sequence keeps its whole state (A = B = 1)."""
    if alive is None:
        return keep_h, keep_c
    held = 1 - alive
    return (held if keep_h is None else 1 - alive * (1 - keep_h)), (held if keep_c is None else 1 - alive * (1 - keep_c))


def _step_mask(mask, t):
    return None if mask is None else (mask[t] if mask.dim() == 3 else mask)


def reference_recurrence(pre, h, c, w_hh, recurrent=None, keep_h=None, keep_c=None, alive=None):
    """The equations above, step by step through autograd. Returns (out (T, B, H), h_T, c_T)."""
    keep_h, keep_c = _keep_masks(keep_h, keep_c, alive)
    w_t = w_hh.t()
    outs = []
    for t in range(pre.size(0)):
        r = h if recurrent is None else h * _step_mask(recurrent, t)
        i, f, g, o = torch.addmm(pre[t], r, w_t).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        c = c_new if keep_c is None else torch.lerp(c_new, c, _step_mask(keep_c, t))
        h = h_new if keep_h is None else torch.lerp(h_new, h, _step_mask(keep_h, t))
        outs.append(h if alive is None else h * _step_mask(alive, t))
    return torch.stack(outs), h, c


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, h, c, w_hh, recurrent, keep_h, keep_c, alive, product_dtype):
        steps, batch, four = pre.shape
        size = four // 4
        low = product_dtype is not None and product_dtype != pre.dtype  # bf16 products, fp32 state and gates
        w_t = (w_hh.to(product_dtype) if low else w_hh).t()
        gates = pre.new_empty(steps, batch, four)  # activated (i, f, g, o)
        c_prev = pre.new_empty(steps, batch, size)
        tanh_c = pre.new_empty(steps, batch, size)
        # R_t * h_{t-1}: what W_hh multiplied (in the products' dtype)
        inputs_h = pre.new_empty(steps, batch, size, dtype=product_dtype if low else pre.dtype)
        outs = pre.new_empty(steps, batch, size)
        for t in range(steps):
            r = h if recurrent is None else h * _step_mask(recurrent, t)
            inputs_h[t] = r
            if low:
                gate = torch.add(pre[t], torch.mm(inputs_h[t], w_t), out=gates[t])
            else:
                gate = torch.addmm(pre[t], r, w_t, out=gates[t])
            gate[:, :2 * size].sigmoid_()
            gate[:, 2 * size:3 * size].tanh_()
            gate[:, 3 * size:].sigmoid_()
            i, f, g, o = gate.chunk(4, dim=1)
            c_prev[t] = c
            c_new = torch.addcmul(f * c, i, g)
            torch.tanh(c_new, out=tanh_c[t])
            h_new = o * tanh_c[t]
            c = c_new if keep_c is None else torch.lerp(c_new, c, _step_mask(keep_c, t))
            h = h_new if keep_h is None else torch.lerp(h_new, h, _step_mask(keep_h, t))
            torch.mul(h, _step_mask(alive, t), out=outs[t]) if alive is not None else outs[t].copy_(h)
        if not any(ctx.needs_input_grad):
            return outs, h, c
        # The local derivatives of every step at once (vectorised over time): d gates / d pre-activations.
        i, f, g, o = gates.chunk(4, dim=2)
        local = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], dim=2)
        through_tanh = o * (1 - tanh_c * tanh_c)
        ctx.save_for_backward(local, through_tanh, f.contiguous(), inputs_h, w_t.t(), recurrent, keep_h, keep_c,
                              alive)
        ctx.weight_dtype = w_hh.dtype
        return outs, h, c

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        local, through_tanh, forget, inputs_h, w_hh, recurrent, keep_h, keep_c, alive = ctx.saved_tensors
        steps, batch, four = local.shape
        low = w_hh.dtype != local.dtype  # the products in w_hh's dtype (bf16), the rest in fp32
        d_h = d_h.clone() if d_h is not None else local.new_zeros(batch, four // 4)
        d_c = d_c.clone() if d_c is not None else local.new_zeros(batch, four // 4)
        d_pre = torch.empty_like(local)
        for t in reversed(range(steps)):
            if d_out is not None:
                d_h = d_h + (d_out[t] if alive is None else d_out[t] * _step_mask(alive, t))
            if keep_h is None:
                d_h_new, d_h = d_h, None
            else:
                keep = _step_mask(keep_h, t)
                d_h_new, d_h = d_h * (1 - keep), d_h * keep
            if keep_c is None:
                d_c_new, d_c = d_c, None
            else:
                keep = _step_mask(keep_c, t)
                d_c_new, d_c = d_c * (1 - keep), d_c * keep
            d_c_new = torch.addcmul(d_c_new, d_h_new, through_tanh[t])
            torch.mul(torch.stack([d_c_new, d_c_new, d_c_new, d_h_new], 1).view(batch, four), local[t], out=d_pre[t])
            d_c = d_c_new * forget[t] if d_c is None else torch.addcmul(d_c, d_c_new, forget[t])
            d_r = (d_pre[t].to(w_hh.dtype) @ w_hh).to(local.dtype) if low else d_pre[t] @ w_hh
            if recurrent is not None:
                d_r = d_r * _step_mask(recurrent, t)
            d_h = d_r if d_h is None else d_h + d_r
        d_w = (d_pre.to(w_hh.dtype) if low else d_pre).view(-1, four).t() @ inputs_h.view(-1, four // 4)
        return d_pre, d_h, d_c, d_w.to(ctx.weight_dtype), None, None, None, None, None


def recurrence(pre, h, c, w_hh, recurrent=None, keep_h=None, keep_c=None, alive=None):
    """The equations above with the hand-written backward pass. Returns (out (T, B, H), h_T, c_T). Under autocast
    the two products of every step (h W_hh^T forward, d_gates W_hh backward) and the weight's gradient run in
    autocast's dtype, as autocast would run them, and the state, the gates and their derivatives in fp32; the
    outputs are fp32."""
    keep_h, keep_c = _keep_masks(keep_h, keep_c, alive)
    device_type = pre.device.type
    if not torch.is_autocast_enabled(device_type):
        return _Recurrence.apply(pre, h, c, w_hh, recurrent, keep_h, keep_c, alive, None)
    with torch.autocast(device_type, enabled=False):
        fp32 = [None if x is None else x.float() for x in (pre, h, c, recurrent, keep_h, keep_c, alive)]
        pre, h, c, recurrent, keep_h, keep_c, alive = fp32
        return _Recurrence.apply(pre, h, c, w_hh, recurrent, keep_h, keep_c, alive,
                                 torch.get_autocast_dtype(device_type))
