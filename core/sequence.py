"""Variable-length sequences: padding, length-bucketed batches and the masked sequence loss."""
import torch
import torch.nn.functional as F


def pad_sequences(seqs, pad=0):
    """List of 1-D id lists/tensors -> (padded (B, T_max) long tensor, lengths (B,))."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    padded = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad, dtype=torch.long)
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return padded, lengths


def bucket_batches(lengths, batch_size, shuffle=False, bucket_batches=50, generator=None):
    """Split example indices into batches of about equal length.

    shuffle=False (evaluation): every example sorted by length, cut into consecutive batches.
    shuffle=True (training): the examples are shuffled, cut into buckets of `bucket_batches` batches, each
    bucket sorted by length and cut into batches, and the batches shuffled; `generator` (or torch's global
    RNG, which the trainer seeds and checkpoints) fixes the order. Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = torch.as_tensor(lengths)
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: (int(lengths[i]), i))
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    span = batch_size * bucket_batches
    batches = []
    for start in range(0, n, span):
        bucket = sorted(perm[start: start + span], key=lambda i: int(lengths[i]))
        batches += [bucket[i: i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def sequence_nll(logits, targets, pad):
    """Masked cross-entropy: (summed NLL over the non-pad targets, number of those targets).

    logits (B, T, V), targets (B, T); positions where targets == pad count for nothing.
    """
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=pad,
                          reduction="sum")
    return nll, int((targets != pad).sum())
