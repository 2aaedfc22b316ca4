import pytest
import torch

from core import DropoutLSTM, init_uniform, lstm_cell

B, T, IN, H, L = 3, 7, 5, 6, 2


def twins(scheme="none", dropout=0.0, layers=L):
    """A fused and a stepwise module with the same parameters."""
    torch.manual_seed(0)
    fused = DropoutLSTM(IN, H, layers, dropout, scheme, stepwise=False)
    init_uniform(fused, 0.3)
    stepwise = DropoutLSTM(IN, H, layers, dropout, scheme, stepwise=True)
    stepwise.load_state_dict(fused.state_dict())
    return fused.double(), stepwise.double()


def random_state(layers=L):
    return (torch.randn(layers, B, H, dtype=torch.double), torch.randn(layers, B, H, dtype=torch.double))


@pytest.mark.parametrize("lengths", [None, torch.tensor([7, 3, 5])])
def test_stepwise_cell_equals_nn_lstm_outputs_and_gradients(lengths):
    fused, stepwise = twins()
    x = torch.randn(B, T, IN, dtype=torch.double)
    h0, c0 = random_state()
    results = []
    for module in (fused, stepwise):
        xs, hs, cs = (t.clone().requires_grad_() for t in (x, h0, c0))
        out, (h, c) = module(xs, (hs, cs), lengths)
        (out.pow(2).sum() + h.sin().sum() + c.cos().sum()).backward()
        grads = [xs.grad, hs.grad, cs.grad] + [p.grad for p in module.parameters()]
        results.append((out, h, c, grads))
    (out_a, h_a, c_a, g_a), (out_b, h_b, c_b, g_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_a, h_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c_a, c_b, atol=1e-5, rtol=0)
    for ga, gb in zip(g_a, g_b):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=0)


def test_cell_matches_torch_lstm_cell_float32():
    torch.manual_seed(1)
    ref = torch.nn.LSTMCell(IN, H)
    x, h, c = torch.randn(B, IN), torch.randn(B, H), torch.randn(B, H)
    weight = torch.cat([ref.weight_ih, ref.weight_hh], 1)
    h1, c1 = lstm_cell(x, h, c, weight, ref.bias_ih + ref.bias_hh)
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)


def test_padding_gives_zero_outputs_and_state_at_true_length():
    fused, stepwise = twins()
    x = torch.randn(B, T, IN, dtype=torch.double)
    lengths = torch.tensor([7, 2, 4])
    for module in (fused, stepwise):
        out, (h, _) = module(x, lengths=lengths)
        assert out.shape == (B, T, H) and h.shape == (L, B, H)
        assert out[1, 2:].abs().sum() == 0 and out[2, 4:].abs().sum() == 0
        alone, (h_alone, _) = module(x[1:2, :2])  # the short sequence run on its own, unpadded
        torch.testing.assert_close(h[:, 1:2], h_alone)
        torch.testing.assert_close(out[1:2, :2], alone)


def test_step_equals_forward_for_decoding():
    fused, _ = twins()
    x = torch.randn(B, T, IN, dtype=torch.double)
    out, final = fused(x)
    state, outs = None, []
    for t in range(T):
        o, state = fused.step(x[:, t], state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), out)
    torch.testing.assert_close(state[0], final[0])


def recurrence_only_run(scheme, stepwise=True):
    """Zero input to a 1-layer LSTM: input dropout has nothing to drop, so the final state differs
    between train and eval mode only if the recurrent connection h_{t-1} -> h_t is masked."""
    torch.manual_seed(0)
    module = DropoutLSTM(IN, H, 1, 0.5, scheme, stepwise=stepwise).double()
    x = torch.zeros(B, 20, IN, dtype=torch.double)
    state = random_state(layers=1)
    module.eval()
    _, (h_eval, c_eval) = module(x, state)
    module.train()
    torch.manual_seed(3)
    _, (h_train, c_train) = module(x, state)
    return (h_eval, c_eval), (h_train, c_train)


@pytest.mark.parametrize("stepwise", [False, True])
def test_zaremba_never_masks_the_recurrent_connection(stepwise):
    (h_eval, c_eval), (h_train, c_train) = recurrence_only_run("zaremba", stepwise)
    torch.testing.assert_close(h_train, h_eval, atol=0, rtol=0)
    torch.testing.assert_close(c_train, c_eval, atol=0, rtol=0)


def test_naive_masks_the_recurrent_connection():
    (h_eval, _), (h_train, _) = recurrence_only_run("naive")
    assert (h_train - h_eval).abs().max() > 1e-3


@pytest.mark.parametrize("stepwise", [False, True])
def test_zaremba_drops_input_between_layers_and_output(stepwise):
    torch.manual_seed(0)
    module = DropoutLSTM(IN, H, 2, 0.5, "zaremba", stepwise=stepwise).train()
    x = torch.randn(B, T, IN)
    out, _ = module(x)
    assert (out == 0).float().mean() > 0.2  # the output mask zeroes about half of the units
    # Each non-recurrent connection is masked: a different draw changes the result, eval mode is deterministic.
    assert not torch.equal(module(x)[0], module(x)[0])
    module.eval()
    assert torch.equal(module(x)[0], module(x)[0])
    # Input dropout alone (1 layer, output ignored) already changes the state.
    one = DropoutLSTM(IN, H, 1, 0.5, "zaremba", stepwise=stepwise).train()
    assert not torch.equal(one(x)[1][0], one(x)[1][0])


def test_none_scheme_ignores_dropout_probability():
    module = DropoutLSTM(IN, H, 2, 0.5, "none").train()
    x = torch.randn(B, T, IN)
    assert module.p == 0 and torch.equal(module(x)[0], module(x)[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheme="gal"), "unknown dropout scheme 'gal'"),
    (dict(dropout=1.0), "dropout must be in [0, 1)"),
    (dict(scheme="naive", stepwise=False), "needs stepwise=True"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        DropoutLSTM(IN, H, **kwargs)


def test_init_uniform_bounds():
    module = DropoutLSTM(IN, H, 2)
    init_uniform(module, 0.05)
    values = torch.cat([p.flatten() for p in module.parameters()])
    assert values.abs().max() <= 0.05 and values.abs().max() > 0.04


@pytest.mark.parametrize("scheme,stepwise", [("zaremba", False), ("zaremba", True), ("naive", True)])
def test_the_connection_between_layers_is_masked(scheme, stepwise):
    """Layer 1 is made blind to its input, so its states are the same in train and eval mode (no mask can
    reach them). Layer 2's final state is taken before the output mask: it differs from eval
    mode only if the layer 1 -> layer 2 connection is dropped."""
    torch.manual_seed(0)
    module = DropoutLSTM(IN, H, 2, 0.5, scheme, stepwise=stepwise).double()
    init_uniform(module, 0.5)
    with torch.no_grad():
        module.lstm.weight_ih_l0.zero_()
        if scheme == "naive":  # keep only the inter-layer mask: no recurrence left to be masked
            module.lstm.weight_hh_l0.zero_()
            module.lstm.weight_hh_l1.zero_()
    x = torch.randn(B, T, IN, dtype=torch.double)
    _, (h_eval, _) = module.eval()(x)
    torch.manual_seed(1)
    _, (h_train, _) = module.train()(x)
    torch.testing.assert_close(h_train[0], h_eval[0], atol=0, rtol=0)
    assert (h_train[1] - h_eval[1]).abs().max() > 1e-3
