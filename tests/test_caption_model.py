"""The Show-and-Tell decoder: the image vector is the first LSTM input, then the words."""
import torch

from core import beam_search
from tasks.caption.task import CaptionModel


def model(scheme="none", dropout=0.0):
    torch.manual_seed(0)
    return CaptionModel(feature_dim=6, vocab_size=11, emb=5, hidden=7, layers=1, dropout=dropout, scheme=scheme).eval()


def test_the_first_lstm_input_is_the_projected_image_vector():
    m = model()
    features, tokens = torch.randn(3, 6), torch.randint(0, 11, (3, 4))
    seen = []
    m.rnn.lstm.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    logits = m(features, tokens)
    assert logits.shape == (3, 4, 11)
    inputs = seen[0]
    assert torch.allclose(inputs[:, 0], m.image_proj(features)) and torch.allclose(inputs[:, 1:], m.embed(tokens))
    other = m(torch.randn(3, 6), tokens)
    assert not torch.allclose(other, logits)  # the words' predictions depend on the image


def test_teacher_forcing_equals_stepwise_decoding_from_the_image_state():
    m = model()
    features, tokens = torch.randn(2, 6), torch.randint(0, 11, (2, 5))
    logits = m(features, tokens)
    state = m.start(features)
    for t in range(tokens.size(1)):
        step_logits, state = m.step(tokens[:, t], state)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-6)


def test_beam_search_decodes_from_the_image_and_dropout_is_off_in_eval():
    m = model(scheme="zaremba", dropout=0.5)
    features = torch.randn(2, 6)
    with torch.no_grad():
        a = m(features, torch.zeros(2, 3, dtype=torch.long))
        b = m(features, torch.zeros(2, 3, dtype=torch.long))
    assert torch.equal(a, b)
    tokens, scores = beam_search(m.step, m.start(features), 2, bos=2, eos=3, beam_size=3, max_len=6)
    greedy, _ = beam_search(m.step, m.start(features), 2, bos=2, eos=3, beam_size=1, max_len=6)
    assert len(tokens) == len(scores) == 2 and all(len(t) <= 6 for t in tokens)
    pair, _ = beam_search([m.step, m.step], [m.start(features), m.start(features)], 2, bos=2, eos=3,
                          beam_size=3, max_len=6)
    assert pair == tokens and len(greedy) == 2  # an ensemble of identical members decodes like one member
