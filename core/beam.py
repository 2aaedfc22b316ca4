"""Batched beam search over any step-wise decoder (beam x batch run as one batch), with ensembles.

A decoder is a step function `step(tokens (N,), state) -> (logits (N, V), state)`, e.g. an embedding,
`DropoutLSTM.step` and a softmax layer.

Finished hypotheses live outside the beam, as in Sutskever et al. (2014) and fairseq/OpenNMT: each step
ranks the 2K best extensions of the K open hypotheses; an `<eos>` among the first K ranks is a finished
hypothesis, recorded for its sentence with its score, and its slot goes to the next open extension, so a
finished hypothesis can never be pushed out by longer ones. A sentence stops when no open hypothesis can
still beat its best finished one (with length_penalty 0 extending only lowers a score), when it has K
finished hypotheses, or at its length limit, where every open hypothesis is ended with `<eos>`. A stopped
sentence leaves the batch (its rows are dropped from the decoder's state), so the decoder only runs the
sentences still open.
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


def output_logits(linear, x, multiple=16):
    """`linear(x)` for decoding steps, through a copy of the layer padded to a multiple of 16 output rows when
    no gradient is wanted. MKL's fp32 GEMM is ~1.6x slower when the output width is not a multiple of 16 (the
    6,482 Multi30k French words: 55 against 87 GFLOP/s on an AVX-512 core), and the real columns come out the
    same (the padding only adds columns). The copy is cached on the layer and remade when its weights change."""
    rows = linear.out_features
    if rows % multiple == 0 or torch.is_grad_enabled():
        return linear(x)
    weight, bias = linear.weight, linear.bias
    key = (weight._version, weight.data_ptr(), weight.dtype, None if bias is None else (bias._version, bias.data_ptr()))
    cached = linear.__dict__.get("_padded_for_decoding")
    if cached is None or cached[0] != key:
        padded = -(-rows // multiple) * multiple
        w = weight.new_zeros(padded, weight.size(1))
        w[:rows] = weight
        b = None if bias is None else torch.cat([bias, bias.new_zeros(padded - rows)])
        cached = linear.__dict__["_padded_for_decoding"] = (key, w, b)
    return torch.nn.functional.linear(x, cached[1], cached[2])[..., :rows]


def ensemble_log_probs(steps, tokens, states):
    """Run every member one step; return the log of their averaged probabilities (the rule of the ensemble
    perplexity rows too) and the members' new states."""
    outputs = [step(tokens, state) for step, state in zip(steps, states)]
    log_probs = [torch.log_softmax(logits.float(), dim=-1) for logits, _ in outputs]
    if len(log_probs) > 1:
        log_probs = torch.stack(log_probs).logsumexp(0) - math.log(len(outputs))
    else:
        log_probs = log_probs[0]
    # a decoder that rules out every token of a row (all -inf) gives a row of NaN, which topk would rank first:
    # make it impossible (checked on one column, as such rows are NaN throughout)
    if bool(log_probs[:, 0].isnan().any()):
        log_probs = log_probs.masked_fill(log_probs.isnan(), -math.inf)
    return log_probs, [state for _, state in outputs]


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
    finished = _Finished(B, length_penalty)
    # The first step extends one copy per sentence (all K beams would be identical); later steps run the K
    # beams of the sentences still open. `alive[i]` is the sentence of row block i.
    alive = list(range(B))
    scores = torch.zeros(B, 1, device=device)
    prefixes = torch.zeros(B, 1, 0, dtype=torch.long, device=device)
    tokens = torch.full((B,), bos, dtype=torch.long, device=device)
    for t in range(int(max_len.max()) + 1):
        log_probs, states = ensemble_log_probs(steps, tokens, states)
        A, width, V = len(alive), scores.size(1), log_probs.size(-1)
        log_probs = log_probs.view(A, width, V)  # a candidate's score: scores[a, k] + log_probs[a, k, v]
        at_limit = (t >= max_len)[:, None]
        if bool(at_limit.any()):  # at its length limit an open hypothesis must end: all are finished with <eos>
            ends = scores + log_probs[..., eos]
            for a, k in zip(*torch.nonzero(torch.isfinite(ends) & at_limit, as_tuple=True)):
                finished.add(alive[a], float(ends[a, k]), prefixes[a, k].tolist())
            log_probs[..., eos] = torch.where(at_limit, -math.inf, log_probs[..., eos])
        top_scores, top_flat = top_candidates(scores, log_probs, min(2 * K, width * V))
        top_parent, top_token = top_flat // V, top_flat % V
        is_eos = top_token == eos
        # <eos> in the first K ranks: a finished hypothesis, recorded and out of the beam
        for a, r in zip(*torch.nonzero(is_eos[:, :K] & torch.isfinite(top_scores[:, :K]), as_tuple=True)):
            finished.add(alive[a], float(top_scores[a, r]), prefixes[a, top_parent[a, r]].tolist())
        # the K best open extensions take the beam
        open_scores = top_scores.masked_fill(is_eos, -math.inf)
        scores, pick = open_scores.topk(min(K, open_scores.size(1)), dim=1)
        parent, token = top_parent.gather(1, pick), top_token.gather(1, pick)
        best_open, limit_list = scores[:, 0].tolist(), max_len.tolist()
        keep = [a for a, b in enumerate(alive) if not (
            t >= limit_list[a] or finished.count[b] >= K or best_open[a] == -math.inf
            or (length_penalty == 0 and finished.best_score(b) >= best_open[a]))]
        if not keep:
            break
        if len(keep) < A:  # stopped sentences leave the batch
            index = torch.tensor(keep, device=device)
            alive = [alive[a] for a in keep]
            scores, parent, token, prefixes = scores[index], parent[index], token[index], prefixes[index]
            max_len = max_len[index]
            block = index
        else:
            block = torch.arange(A, device=device)
        prefixes = torch.cat([prefixes.gather(1, parent[..., None].expand(-1, -1, prefixes.size(2))),
                              token[..., None]], dim=2)
        rows = (block[:, None] * width + parent).view(-1)
        states = [reorder(s, rows) for s in states]
        tokens = token.reshape(-1)

    return [best[2] for best in finished.best], [best[1] for best in finished.best]


def top_candidates(scores, log_probs, k):
    """The k best candidates scores[a, w] + log_probs[a, w, v] of each sentence a over (w, v): (values, flat
    indices w * V + v), sorted, as `(scores[..., None] + log_probs).view(A, -1).topk(k)` gives them, without
    ranking all W x V candidates. Each row is cut into chunks of C tokens; a chunk's best candidate is its
    hypothesis' score plus the chunk's largest log-probability (rounding is monotonic, so that is exact); the k
    best candidates lie in the k chunks with the best maxima (any other chunk has k chunks at or above its own
    best), so only those k x C candidates are ranked: a ninth of the work at beam 12 over 6,482 words."""
    A, W, V = log_probs.shape
    C = _chunk_size(V)
    if C is None or W * V // C < k:
        return (scores[..., None] + log_probs).view(A, W * V).topk(k, dim=1)
    per_row = V // C
    chunks = log_probs.reshape(A, W * per_row, C)
    best = chunks.amax(-1) + scores.repeat_interleave(per_row, dim=1)
    picked = best.topk(k, dim=1).indices  # (A, k) chunk ids
    parent_scores = scores.gather(1, picked // per_row)
    values = parent_scores[..., None] + chunks.gather(1, picked[..., None].expand(-1, -1, C))
    top_values, where = values.view(A, k * C).topk(k, dim=1)
    return top_values, picked.gather(1, where // C) * C + where % C


def _chunk_size(vocab, smallest=32, largest=512):
    """The largest divisor of the vocabulary size in [smallest, largest] (6,482 -> 463), or None (a prime size,
    a tiny vocabulary): chunks must tile a row exactly."""
    return next((c for c in range(min(largest, vocab // 2), smallest - 1, -1) if vocab % c == 0), None)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
