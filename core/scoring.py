"""Scoring log-probabilities against targets: the summed statistics behind Task.metrics, per-item rows for paired
tests, and the pass groups of MC-dropout evaluation."""
import torch.nn.functional as F

IGNORE = -100  # target id that counts for nothing (padding, deleted labels)
UNSEEN = -101  # a held-out label never seen in training: no loss, but always a wrong prediction


def pass_groups(counts, group):
    """Sizes of the groups of MC-dropout passes that reach every count in sorted `counts`, each at most `group`:
    ([1, 2, 5, 10, 20], 10) -> [1, 1, 3, 5, 10]."""
    sizes, done = [], 0
    for k in counts:
        while done < k:
            sizes.append(min(group, k - done))
            done += sizes[-1]
    return sizes


def new_totals():
    return {"nll": 0.0, "count": 0, "correct": 0, "scored": 0}


def tally(totals, logp, targets):
    """Add one batch's log-probabilities (..., classes) against `targets` to the statistics of Task.metrics."""
    real, scored = targets != IGNORE, targets >= 0
    totals["nll"] += float(F.nll_loss(logp[scored], targets[scored], reduction="sum"))
    totals["count"] += int(real.sum())
    totals["scored"] += int(scored.sum())
    totals["correct"] += int((logp.argmax(-1)[real] == targets[real]).sum())


def new_items():
    return {"nll": [], "acc": []}


def add_items(items, logp, targets):
    """Append one batch's per-row [nll, count] and [correct, count] (rows: all but the last axis of `targets`)."""
    targets = targets.reshape(-1, targets.size(-1))  # (rows, positions)
    logp = logp.reshape(*targets.shape, logp.size(-1))
    real, scored = targets != IGNORE, targets >= 0  # UNSEEN: counted (always wrong), no loss
    nll = F.nll_loss(logp.transpose(1, 2), targets.masked_fill(~scored, 0), reduction="none") * scored
    correct = (logp.argmax(-1) == targets) & real
    for row_nll, row_count, row_correct in zip(nll.sum(1).tolist(), real.sum(1).tolist(), correct.sum(1).tolist()):
        if row_count:
            items["nll"].append([round(row_nll, 4), row_count])
            items["acc"].append([row_correct, row_count])
