"""Softmax cross-entropy fused with the output layer, for bf16 training on a CPU.

Under bf16 autocast the plain path (nn.Linear -> .float() -> F.cross_entropy) writes the logits three more times at
full size in fp32: their copy, log_softmax, and in the backward pass a zero-filled gradient, log_softmax's backward
and a cast back to bf16 (20% of a medium training step on an AMD EPYC, docs/performance.md). Here the bf16 logits
are made by one product, and log-softmax runs in fp32 on a few rows at a time, which stay in cache; when a gradient
is needed, each chunk's gradient (softmax - one-hot, rounded to bf16 as autocast's backward rounds it) overwrites its
logits in place, and the backward pass is the two products of nn.Linear's own backward.
"""
import torch

IGNORE_INDEX = -100  # F.cross_entropy's default: targets of this value (padding) count for nothing
CHUNK_ROWS = 64  # rows of fp32 log-softmax at a time: 64 x 10k words is 2.5 MB (docs/performance.md)


def linear_cross_entropy(hidden, weight, bias, targets, ignore_index=IGNORE_INDEX, chunk_rows=CHUNK_ROWS):
    """Summed negative log-likelihood of `targets` (N,) under softmax(hidden @ weight.T + bias), hidden (N, H).

    The products run in autocast's dtype when autocast is on (else in hidden's dtype), log-softmax in fp32
    (float64 stays float64). The same value and gradients as
    `F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum", ignore_index=...)` up to
    rounding (tests/test_loss.py)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and targets (N,); got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.to(dtype), weight, bias, targets, ignore_index, chunk_rows)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_rows):
        w = weight.to(hidden.dtype)
        logits = hidden @ w.t()
        wants_grad = any(ctx.needs_input_grad[:3])
        softmax_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        # the bias is added in the chunks, in fp32 (addmm would first copy it into every row of the logits)
        bias = torch.zeros((), dtype=softmax_dtype) if bias is None else bias.to(softmax_dtype)
        nll = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
        for start in range(0, logits.size(0), chunk_rows):
            rows, chunk_targets = logits[start:start + chunk_rows], targets[start:start + chunk_rows]
            counted = chunk_targets != ignore_index
            index = torch.where(counted, chunk_targets, 0).unsqueeze(1)
            log_probs = torch.log_softmax(torch.add(rows, bias, alpha=1).to(softmax_dtype), dim=1)
            nll -= (log_probs.gather(1, index).squeeze(1) * counted).sum()
            if wants_grad:
                grad = log_probs.exp_()
                grad.scatter_add_(1, index, -counted.to(softmax_dtype).unsqueeze(1))
                grad.mul_(counted.unsqueeze(1))
                rows.copy_(grad)  # d(summed nll)/d(logits) of these rows, in place of them
        if wants_grad:
            ctx.save_for_backward(hidden, w, logits)
        ctx.weight_dtype, ctx.has_bias = weight.dtype, bias.dim() > 0
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, w, grad_logits = ctx.saved_tensors
        grad_hidden = grad_weight = grad_bias = None
        scale = grad_nll.to(hidden.dtype) if hidden.dtype == torch.float64 else grad_nll
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.mm(grad_logits, w).mul_(scale)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad_logits.t(), hidden).to(ctx.weight_dtype).mul_(scale)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_logits.sum(0, dtype=ctx.weight_dtype).mul_(scale)
        return grad_hidden, grad_weight, grad_bias, None, None, None
