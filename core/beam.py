"""Batched beam search over any step-wise decoder (beam x batch run as one batch), with ensembles.

A decoder is a step function `step(tokens (N,), state) -> (logits (N, V), state)`, e.g. an embedding,
`DropoutLSTM.step` and a softmax layer. Hypotheses that emit <eos> are finished: they keep their score and
their place in the beam but are not extended, so the search ends when every beam of every sentence is
finished (then no open hypothesis can beat them) or at the maximum length, where <eos> is forced.
"""
import torch


def select_state(state, index, dim=1):
    """Pick rows `index` of every tensor in a (nested) state along its batch dim (1 for LSTM (h, c))."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(dim, index)
    return type(state)(select_state(s, index, dim) for s in state)


def ensemble_log_probs(steps, tokens, states):
    """Run every member one step; average their log-probabilities and renormalise."""
    outputs = [step(tokens, state) for step, state in zip(steps, states)]
    log_probs = torch.stack([torch.log_softmax(logits.float(), dim=-1) for logits, _ in outputs]).mean(0)
    # a row that rules out every token (all -inf) gives NaN: make it "impossible", not poison the beam
    return torch.log_softmax(log_probs, dim=-1).nan_to_num(nan=float("-inf")), [state for _, state in outputs]


@torch.no_grad()
def beam_search(steps, states, batch_size, bos, eos, beam_size=12, max_len=50, length_penalty=0.0,
                reorder=select_state):
    """Decode `batch_size` sentences at once.

    steps / states: one step function and its initial state (for the `batch_size` sentences), or lists of
        them: an ensemble whose log-probabilities are averaged at every step.
    beam_size: 1 is greedy decoding.
    max_len: most tokens before <eos>, an int or a (batch_size,) tensor (e.g. relative to each source).
    length_penalty: alpha of the final ranking score / length**alpha (0 ranks by total log-probability).
    reorder(state, index): selects batch rows of a state; the default fits LSTM (h, c) tuples.

    Returns (tokens, scores): for each sentence its best hypothesis as a list of ids without <bos>/<eos>,
    and that hypothesis' total log-probability.
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
    expand = torch.arange(B, device=device).repeat_interleave(K)
    states = [reorder(s, expand) for s in states]

    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one may be extended at step 0
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, device=device)
    tokens = torch.full((B * K,), bos, dtype=torch.long, device=device)
    token_hist, parent_hist = [], []
    for t in range(int(max_len.max()) + 1):
        log_probs, states = ensemble_log_probs(steps, tokens, states)
        V = log_probs.size(-1)
        log_probs = log_probs.view(B, K, V)
        # an open hypothesis at its sentence's length limit must end now (with <eos>'s own probability)
        ending = torch.full_like(log_probs, float("-inf"))
        ending[..., eos] = log_probs[..., eos]
        log_probs = torch.where((t >= max_len)[:, None, None], ending, log_probs)
        # a finished hypothesis is carried with <eos> at no cost, never extended
        carried = torch.full_like(log_probs, float("-inf"))
        carried[..., eos] = 0.0
        log_probs = torch.where(finished[..., None], carried, log_probs)
        candidates = (scores[..., None] + log_probs).view(B, K * V)
        scores, flat = candidates.topk(K, dim=1)
        parent, token = flat // V, flat % V
        was_finished = finished.gather(1, parent)
        lengths = lengths.gather(1, parent) + (~was_finished).float()
        finished = was_finished | (token == eos)
        rows = (torch.arange(B, device=device)[:, None] * K + parent).view(-1)
        states = [reorder(s, rows) for s in states]
        token_hist.append(token)
        parent_hist.append(parent)
        tokens = token.view(-1)
        if bool(finished.all()):
            break

    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = ranking.argmax(dim=1)
    best_scores = scores.gather(1, best[:, None]).squeeze(1)
    return _backtrack(token_hist, parent_hist, best, eos), best_scores.tolist()


def _backtrack(token_hist, parent_hist, best, eos):
    beam = best.clone()
    columns = []
    for token, parent in zip(reversed(token_hist), reversed(parent_hist)):
        columns.append(token.gather(1, beam[:, None]).squeeze(1))
        beam = parent.gather(1, beam[:, None]).squeeze(1)
    sequences = torch.stack(columns[::-1], dim=1).tolist() if columns else [[] for _ in range(len(best))]
    return [seq[: seq.index(eos)] if eos in seq else seq for seq in sequences]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
