import math

import torch

from core import beam_search
from tasks.mt.task import Seq2Seq

PAD, UNK, BOS, EOS, A, B, C = range(7)


def table_model(rows, calls=None):
    """A hand-set decoder: the next-token distribution depends only on the last token (the state)."""
    table = torch.full((7, 7), float("-inf"))
    for prev, probs in rows.items():
        for token, p in probs.items():
            table[prev, token] = math.log(p)

    def step(tokens, state):
        if calls is not None:
            calls.append(tokens.clone())
        return table[tokens], tokens[None, :]

    return step


# greedy takes A (0.6) and then ends with probability 0.3: 0.18 in all; the best sequence is B <eos>: 0.36.
# After <eos> the model would happily go on with A (probability 1): a finished hypothesis must not be extended.
ROWS = {BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.3, A: 0.25, B: 0.25, C: 0.2}, B: {EOS: 0.9, C: 0.1},
        C: {EOS: 1.0}, EOS: {A: 1.0}}


def start(batch):
    return torch.full((1, batch), BOS)


def test_beam_finds_the_best_sequence_that_greedy_misses():
    step = table_model(ROWS)
    greedy, greedy_scores = beam_search(step, start(1), 1, BOS, EOS, beam_size=1, max_len=10)
    best, scores = beam_search(step, start(1), 1, BOS, EOS, beam_size=2, max_len=10)
    assert greedy == [[A]] and math.isclose(greedy_scores[0], math.log(0.6 * 0.3), rel_tol=1e-6)
    assert best == [[B]] and math.isclose(scores[0], math.log(0.4 * 0.9), rel_tol=1e-6)


def test_finished_hypotheses_are_kept_not_extended_and_the_search_stops():
    calls = []
    tokens, scores = beam_search(table_model(ROWS, calls), start(3), 3, BOS, EOS, beam_size=3, max_len=50)
    assert tokens == [[B]] * 3 and all(math.isclose(s, math.log(0.36), rel_tol=1e-6) for s in scores)
    # the three best hypotheses (B eos, A eos, B C eos) are finished by step 4: no step runs to max_len
    assert len(calls) <= 4


def test_maximum_length_forces_eos_per_sentence():
    never_ends = {BOS: {A: 1.0}, A: {A: 0.9, EOS: 0.1}}
    tokens, _ = beam_search(table_model(never_ends), start(2), 2, BOS, EOS, beam_size=1,
                            max_len=torch.tensor([2, 4]))
    assert tokens == [[A, A], [A, A, A, A]]


def random_seq2seq(seed=0):
    torch.manual_seed(seed)
    model = Seq2Seq(src_vocab=20, tgt_vocab=15, emb=8, hidden=12, layers=2, dropout=0.3)
    return model.eval()


def greedy_decode(model, src, max_len):
    """Written separately from beam_search: one sentence, argmax at every step."""
    state = model.encode(src[None, :], torch.tensor([len(src)]))
    token, out = torch.tensor([BOS]), []
    for _ in range(max_len):
        logits, state = model.step(token, state)
        token = logits.argmax(-1)
        if token.item() == EOS:
            break
        out.append(token.item())
    return out


def test_beam_one_equals_a_separately_written_greedy_decode():
    model = random_seq2seq()
    with torch.no_grad():
        model.out.bias[EOS] += 0.4  # so that some sentences end before the length limit
    torch.manual_seed(1)
    sources = [torch.randint(4, 20, (n,)) for n in (3, 7, 5, 9)]
    padded = torch.zeros(4, 9, dtype=torch.long)
    for i, s in enumerate(sources):
        padded[i, : len(s)] = s
    lengths = torch.tensor([len(s) for s in sources])
    tokens, _ = beam_search(model.step, model.encode(padded, lengths), 4, BOS, EOS, beam_size=1, max_len=12)
    expected = [greedy_decode(model, s, 12) for s in sources]
    assert tokens == expected
    assert any(len(t) < 12 for t in tokens) and any(len(t) == 12 for t in tokens)  # both ways of ending


def test_an_ensemble_of_two_identical_models_decodes_exactly_like_one():
    model = random_seq2seq()
    twin = random_seq2seq()
    src = torch.randint(4, 20, (3, 6))
    lengths = torch.tensor([6, 4, 5])
    one = beam_search(model.step, model.encode(src, lengths), 3, BOS, EOS, beam_size=4, max_len=10)
    two = beam_search([model.step, twin.step], [model.encode(src, lengths), twin.encode(src, lengths)], 3, BOS, EOS,
                      beam_size=4, max_len=10)
    assert one == two
    other = random_seq2seq(seed=5)
    mixed = beam_search([model.step, other.step], [model.encode(src, lengths), other.encode(src, lengths)], 3, BOS,
                        EOS, beam_size=4, max_len=10)
    assert mixed != one  # a different member does change the output


def test_length_penalty_prefers_longer_hypotheses():
    rows = {BOS: {EOS: 0.5, A: 0.5}, A: {A: 0.7, EOS: 0.3}}
    plain, _ = beam_search(table_model(rows), start(1), 1, BOS, EOS, beam_size=4, max_len=6)
    normalised, _ = beam_search(table_model(rows), start(1), 1, BOS, EOS, beam_size=4, max_len=6, length_penalty=1.0)
    assert plain == [[]] and len(normalised[0]) > 0


# The review's example: <eos> first (0.10) against two words (0.45 each), after which the probability flows
# into long continuations. Old search: the finished "<eos>" hypothesis was pushed out of the beam by longer
# ones and a long sentence of probability ~1e-4 came back. Finished hypotheses live outside the beam now.
EARLY_END = {BOS: {EOS: 0.10, A: 0.45, B: 0.45}, A: {A: 0.5, B: 0.48, EOS: 0.02}, B: {A: 0.5, B: 0.48, EOS: 0.02}}


def test_a_finished_hypothesis_is_never_pushed_out_of_the_beam():
    for width in range(3, 7):  # <eos> is among the first `width` ranks at step 0 from width 3 on
        calls = []
        tokens, scores = beam_search(table_model(EARLY_END, calls), start(2), 2, BOS, EOS, beam_size=width,
                                     max_len=20)
        assert tokens == [[], []], width
        assert all(math.isclose(s, math.log(0.10), rel_tol=1e-6) for s in scores), width
        # stops once no open hypothesis can beat 0.10 (0.45 * 0.5**n < 0.10 from n = 3): not at max_len
        assert len(calls) <= 5, width


def test_a_wider_beam_is_never_worse_on_the_early_end_decoder():
    scores = [beam_search(table_model(EARLY_END), start(1), 1, BOS, EOS, beam_size=k, max_len=20)[1][0]
              for k in range(1, 8)]
    assert all(a <= b + 1e-9 for a, b in zip(scores, scores[1:])), scores
    assert scores[0] < math.log(0.01) < scores[-1]


def test_ensemble_averages_probabilities_not_log_probabilities():
    sure = {BOS: {A: 0.9, B: 0.1}, A: {EOS: 1.0}, B: {EOS: 1.0}}
    torn = {BOS: {A: 0.01, B: 0.99}, A: {EOS: 1.0}, B: {EOS: 1.0}}
    # B wins either way; its score tells the rules apart: log((0.1 + 0.99) / 2), not log(sqrt(0.1 * 0.99))
    _, scores = beam_search([table_model(sure), table_model(torn)], [start(1), start(1)], 1, BOS, EOS,
                            beam_size=2, max_len=5)
    assert math.isclose(scores[0], math.log((0.1 + 0.99) / 2), rel_tol=1e-6)


def test_top_candidates_ranks_like_topk_over_every_candidate():
    """The chunked selection returns what topk over all W x V candidates returns: values and indices, with
    -inf candidates (an <eos> ruled out at the length limit) and for vocabularies that do not tile (fallback)."""
    from core.beam import top_candidates

    torch.manual_seed(0)
    for trial in range(120):
        A, W = int(torch.randint(1, 6, ())), int(torch.randint(1, 13, ()))
        V = (6482, 1000, 97, 64)[trial % 4]
        log_probs = torch.randn(A, W, V).log_softmax(-1)
        if trial % 3 == 0:
            log_probs[..., EOS] = -math.inf
        scores = torch.randn(A, W) * 3
        k = min(24, W * V)
        expected = (scores[..., None] + log_probs).view(A, -1).topk(k, dim=1)
        values, indices = top_candidates(scores, log_probs, k)
        assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices), trial


def test_decoding_logits_through_the_padded_layer_are_the_layers_own():
    from core.beam import output_logits

    layer = torch.nn.Linear(32, 6482)
    x = torch.randn(96, 32)
    with torch.no_grad():
        assert torch.equal(output_logits(layer, x), layer(x))
        layer.weight[5] += 1.0  # the cached copy follows the weights
        assert torch.equal(output_logits(layer, x), layer(x))
    assert output_logits(layer, x).requires_grad  # training and gradients: the layer itself


def test_the_fast_decoding_path_translates_exactly_like_the_plain_one(monkeypatch):
    """Beam 12 over a 6,482-word output layer (chunked ranking, padded projection) against topk over every
    candidate and the plain layer: the same tokens and scores."""
    import core.beam as beam
    import tasks.mt.task as mt

    torch.manual_seed(3)
    model = Seq2Seq(src_vocab=50, tgt_vocab=6482, emb=16, hidden=32, layers=2).eval()
    with torch.no_grad():
        model.out.bias[EOS] += 2.0  # some hypotheses end early
    src = torch.randint(4, 50, (70, 8))
    lengths = torch.randint(3, 9, (70,))

    def decode():
        return beam_search(model.step, model.encode(src, lengths), 70, BOS, EOS, beam_size=12, max_len=lengths + 4)

    fast = decode()
    monkeypatch.setattr(beam, "top_candidates", lambda s, lp, k: (s[..., None] + lp).view(lp.size(0), -1).topk(k, dim=1))
    monkeypatch.setattr(mt, "output_logits", lambda layer, x: layer(x))
    plain = decode()
    assert fast[0] == plain[0] and fast[1] == plain[1]
    assert any(len(t) < int(n) + 4 for t, n in zip(fast[0], lengths))
