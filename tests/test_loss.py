"""core.loss.linear_cross_entropy: the output layer and the summed cross-entropy in one, with its own backward pass,
against the plain path (F.linear -> F.cross_entropy) in float64, fp32 and bf16 autocast, with and without padding."""
import pytest
import torch
import torch.nn.functional as F

from core.loss import linear_cross_entropy

N, H, V = 37, 6, 23  # 37 rows: chunks of 8 leave a short last chunk


def leaves(dtype, padded, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=dtype) * 0.5).requires_grad_()
    bias = (torch.randn(V, generator=g, dtype=dtype) * 0.1).requires_grad_()
    targets = torch.randint(V, (N,), generator=g)
    if padded:
        targets[[0, 9, 10, 36]] = -100  # padding, as MT and captions mark it
    return hidden, weight, bias, targets


def value_and_gradients(loss_fn, hidden, weight, bias, targets):
    for leaf in (hidden, weight, bias):
        leaf.grad = None
    loss = loss_fn(hidden, weight, bias, targets)
    (loss / 3).backward()  # the LM divides by the batch: the backward pass must scale by grad_output
    return [loss.detach(), hidden.grad, weight.grad, bias.grad]


def plain(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def fused(hidden, weight, bias, targets):
    return linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=8)


@pytest.mark.parametrize("padded", [False, True])
def test_equals_the_plain_path_in_float64(padded):
    args = leaves(torch.float64, padded)
    plain64 = lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b), t, reduction="sum")  # noqa: E731
    for got, want in zip(value_and_gradients(fused, *args), value_and_gradients(plain64, *args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padded", [False, True])
def test_gradcheck(padded):
    hidden, weight, bias, targets = leaves(torch.float64, padded)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, targets, chunk_rows=8),
                                    (hidden, weight, bias))


@pytest.mark.parametrize("padded", [False, True])
def test_equals_the_plain_path_in_fp32(padded):
    args = leaves(torch.float32, padded)
    for got, want in zip(value_and_gradients(fused, *args), value_and_gradients(plain, *args)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_bf16_autocast_matches_the_plain_autocast_path(padded):
    """Both multiply in bf16 and take log-softmax in fp32; the gradients are rounded to bf16 where autocast's are."""
    args = leaves(torch.float32, padded)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_gradients(fused, *args)
        want = value_and_gradients(plain, *args)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32  # fp32 loss, fp32 parameter gradients
    for g, w in zip(got, want):
        scale = w.abs().max()
        assert (g - w).abs().max() <= 0.02 * scale
    # and bf16 is really used: the value differs from fp32's at bf16's precision, not fp32's
    assert not torch.equal(got[0], value_and_gradients(fused, *args)[0])


def test_padded_rows_count_for_nothing():
    hidden, weight, bias, targets = leaves(torch.float64, padded=True)
    value, grad_hidden, *_ = value_and_gradients(fused, hidden, weight, bias, targets)
    kept = targets != -100
    assert torch.all(grad_hidden[~kept] == 0)
    alone = linear_cross_entropy(hidden[kept].detach(), weight.detach(), bias.detach(), targets[kept])
    torch.testing.assert_close(value, alone, rtol=1e-12, atol=0)


def test_without_gradients_it_only_evaluates():
    hidden, weight, bias, targets = leaves(torch.float32, padded=False)
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=8)
    torch.testing.assert_close(got, plain(hidden, weight, bias, targets).detach(), rtol=1e-5, atol=1e-5)


def test_shapes_are_checked():
    hidden, weight, bias, targets = leaves(torch.float32, padded=False)
    with pytest.raises(ValueError, match=r"hidden must be \(N, H\)"):
        linear_cross_entropy(hidden, weight, bias, targets[:-1])


def test_the_lm_trains_through_it_in_bf16_with_the_plain_loss_value(monkeypatch):
    """The LM's bf16 training step takes the fused loss; its loss and gradients are those of the plain path."""
    import tasks.lm.task as lm
    from tasks.lm.task import LanguageModelTask, PRESETS, build_language_model

    calls = []
    monkeypatch.setattr(lm, "linear_cross_entropy", lambda *a, **k: calls.append(1) or linear_cross_entropy(*a, **k))

    config = dict(PRESETS["tiny"], scheme="none", dropout=0.0)
    torch.manual_seed(0)
    model = build_language_model(config, 50)
    task = LanguageModelTask.__new__(LanguageModelTask)
    batch = (torch.randint(50, (4, 5)), torch.randint(50, (4, 5)))
    results = []
    for fused_path in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused_path:
                out = task.forward(model, batch, None)
                loss = out.loss
            else:
                logits, _ = model(batch[0])
                loss = F.cross_entropy(logits.float().reshape(-1, 50), batch[1].reshape(-1), reduction="sum") / 4
        loss.backward()
        results.append((loss.detach(), model.decoder.weight.grad.clone(), model.embed.weight.grad.clone()))
    assert calls == [1]  # the training step took it, the plain path did not
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        task.forward(model, batch, None)
    assert calls == [1]  # evaluation keeps the plain path
    for got, want in zip(*results):
        assert (got - want).abs().max() <= 0.02 * want.abs().max()
