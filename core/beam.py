"""Batched beam search over any step-wise decoder (beam x batch run as one batch), with ensembles.

A decoder is a step function `step(tokens (N,), state) -> (logits (N, V), state)`, e.g. an embedding,
`DropoutLSTM.step` and a softmax layer.

Finished hypotheses live outside the beam, as in Sutskever et al. (2014) and fairseq/OpenNMT: each step
ranks the 2K best extensions of the K open hypotheses; an `<eos>` among the first K ranks is a finished
hypothesis, recorded for its sentence with its score, and its slot goes to the next open extension, so a
finished hypothesis can never be pushed out by longer ones. A sentence stops when no open hypothesis can
still beat its best finished one (with length_penalty 0 extending only lowers a score), when it has K
finished hypotheses, or at its length limit, where every open hypothesis is ended with `<eos>`.
"""
import math

import torch


def select_state(state, index, dim=1):
    """Pick rows `index` of every tensor in a (nested) state along its batch dim (1 for LSTM (h, c))."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(dim, index)
    return type(state)(select_state(s, index, dim) for s in state)


def ensemble_log_probs(steps, tokens, states):
    """Run every member one step; return the log of their averaged probabilities (the rule of the ensemble
    perplexity rows too) and the members' new states."""
    outputs = [step(tokens, state) for step, state in zip(steps, states)]
    log_probs = torch.stack([torch.log_softmax(logits.float(), dim=-1) for logits, _ in outputs])
    if len(outputs) > 1:
        log_probs = log_probs.logsumexp(0) - math.log(len(outputs))
    else:
        log_probs = log_probs[0]
    # a row that rules out every token (all -inf) gives NaN, which topk would rank first: make it impossible
    return log_probs.masked_fill(log_probs.isnan(), -math.inf), [state for _, state in outputs]


class _Finished:
    """The finished hypotheses of every sentence: how many, and the best one by ranking score."""

    def __init__(self, batch_size, length_penalty):
        self.length_penalty = length_penalty
        self.count = [0] * batch_size
        self.best = [None] * batch_size  # (ranking score, log-probability, tokens)

    def add(self, sentence, score, tokens):
        # the length counts <eos>, as in fairseq: an empty hypothesis has length 1
        rank = score / (len(tokens) + 1) ** self.length_penalty if self.length_penalty else score
        self.count[sentence] += 1
        if self.best[sentence] is None or rank > self.best[sentence][0]:
            self.best[sentence] = (rank, score, tokens)

    def best_score(self, sentence):
        return -math.inf if self.best[sentence] is None else self.best[sentence][1]


@torch.no_grad()
def beam_search(steps, states, batch_size, bos, eos, beam_size=12, max_len=50, length_penalty=0.0,
                reorder=select_state):
    """Decode `batch_size` sentences at once.

    steps / states: one step function and its initial state (for the `batch_size` sentences), or lists of
        them: an ensemble whose probabilities are averaged at every step.
    beam_size: 1 is greedy decoding.
    max_len: most tokens before <eos>, an int or a (batch_size,) tensor (e.g. relative to each source).
    length_penalty: alpha of the final ranking score / length**alpha (0 ranks by total log-probability).
    reorder(state, index): selects batch rows of a state; the default fits LSTM (h, c) tuples.

    Returns (tokens, scores): for each sentence its best finished hypothesis as a list of ids without
    <bos>/<eos>, and that hypothesis' total log-probability (including <eos>).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not isinstance(steps, (list, tuple)):
        steps, states = [steps], [states]
    if len(steps) != len(states):
        raise ValueError(f"{len(steps)} step functions but {len(states)} states")
    B, K = batch_size, beam_size
    probe = next((s for s in _tensors(states)), None)
    device = probe.device if probe is not None else torch.device("cpu")
    max_len = torch.as_tensor(max_len, device=device).expand(B).clone()
    limits = max_len.tolist()
    states = [reorder(s, torch.arange(B, device=device).repeat_interleave(K)) for s in states]

    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one may be extended at step 0
    prefixes = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    tokens = torch.full((B * K,), bos, dtype=torch.long, device=device)
    finished = _Finished(B, length_penalty)
    done = [False] * B
    for t in range(int(max_len.max()) + 1):
        log_probs, states = ensemble_log_probs(steps, tokens, states)
        V = log_probs.size(-1)
        candidates = scores[..., None] + log_probs.view(B, K, V)
        at_limit = (t >= max_len)[:, None]
        # at its length limit an open hypothesis must end: all of them are finished with <eos> now
        ends = candidates[..., eos]
        for b, k in zip(*torch.nonzero(torch.isfinite(ends) & at_limit, as_tuple=True)):
            finished.add(int(b), float(ends[b, k]), prefixes[b, k].tolist())
        candidates[..., eos] = torch.where(at_limit, -math.inf, ends)
        top_scores, top_flat = candidates.view(B, K * V).topk(min(2 * K, K * V), dim=1)
        top_parent, top_token = top_flat // V, top_flat % V
        is_eos = top_token == eos
        # <eos> in the first K ranks: a finished hypothesis, recorded and out of the beam
        for b, r in zip(*torch.nonzero(is_eos[:, :K] & torch.isfinite(top_scores[:, :K]), as_tuple=True)):
            finished.add(int(b), float(top_scores[b, r]), prefixes[b, top_parent[b, r]].tolist())
        # the K best open extensions take the beam
        open_scores = top_scores.masked_fill(is_eos, -math.inf)
        scores, pick = open_scores.topk(K, dim=1)
        parent, token = top_parent.gather(1, pick), top_token.gather(1, pick)
        best_open = scores[:, 0].tolist()  # one read of the device, not one per sentence
        for b in range(B):
            done[b] = done[b] or t >= limits[b] or finished.count[b] >= K or (
                length_penalty == 0 and finished.best_score(b) >= best_open[b])
        if all(done):
            break
        scores = scores.masked_fill(torch.tensor(done, device=device)[:, None], -math.inf)
        prefixes = torch.cat([prefixes.gather(1, parent[..., None].expand(-1, -1, prefixes.size(2))),
                              token[..., None]], dim=2)
        rows = (torch.arange(B, device=device)[:, None] * K + parent).view(-1)
        states = [reorder(s, rows) for s in states]
        tokens = token.view(-1)

    return [best[2] for best in finished.best], [best[1] for best in finished.best]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
