"""core.recurrence: the hand-written backward pass through time equals autograd on the same equations."""
import pytest
import torch

from core.recurrence import recurrence, reference_recurrence

T, B, H = 7, 3, 5


def masks(kind, train=True):
    g = torch.Generator().manual_seed(4)
    binary = lambda *shape: (torch.rand(*shape, generator=g) < 0.4).double()  # noqa: E731
    recurrent = {"naive": binary(T, B, H) * 2, "variational": binary(B, H) * 2}.get(kind)
    keep = None
    if kind == "zoneout":
        keep = (binary(T, B, H), binary(T, B, H)) if train else (torch.tensor(0.3, dtype=torch.double),) * 2
    return recurrent, *(keep or (None, None))


@pytest.mark.parametrize("kind", ["none", "naive", "variational", "zoneout", "zoneout-eval"])
@pytest.mark.parametrize("padded", [False, True])
def test_recurrence_equals_autograd_outputs_and_gradients(kind, padded):
    torch.manual_seed(0)
    leaves = [torch.randn(T, B, 4 * H), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, H) * 0.5]
    leaves = [t.double().requires_grad_() for t in leaves]
    recurrent, keep_h, keep_c = masks(kind.split("-")[0], train=not kind.endswith("eval"))
    alive = (torch.arange(T)[:, None] < torch.tensor([7, 3, 5])[None]).double()[..., None] if padded else None
    results = []
    for run in (recurrence, reference_recurrence):
        for leaf in leaves:
            leaf.grad = None
        out, h, c = run(*leaves, recurrent, keep_h, keep_c, alive)
        (out.pow(2).sum() + h.sin().sum() + c.cos().sum()).backward()
        results.append([out, h, c] + [leaf.grad for leaf in leaves])
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, atol=1e-12, rtol=0)
    if padded:
        assert results[0][0][3:, 1].abs().sum() == 0  # a finished sequence outputs zeros


def test_recurrence_gradcheck():
    torch.manual_seed(1)
    leaves = [t.double().requires_grad_() for t in (torch.randn(4, 2, 12), torch.randn(2, 3), torch.randn(2, 3),
                                                     torch.randn(12, 3))]
    recurrent = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]], dtype=torch.double)
    keep = (torch.rand(4, 2, 3) < 0.5).double()
    assert torch.autograd.gradcheck(lambda *a: recurrence(*a, recurrent, keep, keep.flip(0)), leaves)


def test_bf16_products_under_autocast_match_fp32_and_keep_fp32_state():
    """Under bf16 autocast the step's products run in bf16 (outputs and gradients within bf16's precision of the
    fp32 recurrence), the state and the outputs stay fp32, and W_hh's gradient comes back in its own dtype."""
    torch.manual_seed(0)
    leaves = [torch.randn(T, B, 4 * H), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, H) * 0.5]
    results = []
    for bf16 in (False, True):
        copies = [leaf.clone().requires_grad_() for leaf in leaves]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, h, c = recurrence(*copies)
        assert out.dtype == h.dtype == c.dtype == torch.float32
        (out.pow(2).sum() + h.sin().sum() + c.cos().sum()).backward()
        results.append([out, h, c] + [leaf.grad for leaf in copies])
    assert results[1][-1].dtype == torch.float32
    for low, full in zip(results[1], results[0]):
        scale = full.abs().max()
        assert (low - full).abs().max() <= 0.03 * scale
    assert not torch.equal(results[1][0], results[0][0])  # bf16 products really ran
