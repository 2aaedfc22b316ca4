"""How sure is a difference between two variants? Seeds and a paired bootstrap over test items.

Every single-model run records per-item test statistics (`details["items"]`, written by the Trainer):
  nll   [[nll, tokens], ...]        per sentence / caption / utterance / bptt chunk -> perplexity
  acc   [[correct, frames], ...]    per utterance -> frame accuracy (%)
  bleu  [[sacreBLEU sufficient statistics], ...] per sentence -> corpus BLEU
  cider [score, ...]                per image -> CIDEr (the corpus score is their mean)
Item i is the same data in every run of one config, so two variants can be compared item by item.

`paired_comparison(a_runs, b_runs, metric)` gives, for the seed-mean metric of a minus that of b:
  - the mean of the per-seed differences (seeds paired by number) with a 95% t interval over seeds;
  - a paired bootstrap over test items (the same resampled items for every run of both variants and for every
    run on the same test set, as in Koehn 2004 and sacreBLEU's paired bootstrap), its 95% percentile interval
    and two-sided p-value (the tables add Holm's adjustment over their family of comparisons);
  - how many seed pairs go each way.
"""
import hashlib
import math
import statistics

import numpy as np

RESAMPLES = 2000

# metric key (as in the tables) -> (items key, how summed item columns become the metric)
METRICS = {
    "ppl": ("nll", lambda s: np.exp(s[..., 0] / s[..., 1])),
    "acc": ("acc", lambda s: 100.0 * s[..., 0] / s[..., 1]),
    "bleu": ("bleu", lambda s: bleu_from_stats(s)),
    "cider": ("cider", lambda s: s[..., 0] / s[..., 1]),
}


def _betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b) (Lentz's continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_cdf(t, df):
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q, df):
    """The q-quantile (0.5 < q < 1) of Student's t with `df` degrees of freedom, exact to ~1e-10 (bisection)."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def t975(df):
    """The two-sided 95% quantile of Student's t, for any df (not 1.96 above 30)."""
    return t_quantile(0.975, df)


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values (same order); controls the family-wise error rate."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seed_interval(diffs, bound=None):
    """95% interval of the mean of per-seed values or differences (Student's t; at least two seeds). `bound`:
    the (low, high) a bounded metric cannot leave (accuracy in %). The t interval is symmetric and can run past
    it (train accuracy 97.27 over seven folds: [94.20, 100.34]); it is clipped there, which loses no coverage:
    the true mean lies inside the bound."""
    mean, half = statistics.mean(diffs), t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    return (max(low, bound[0]), min(high, bound[1])) if bound else (low, high)


def bleu_from_stats(stats, max_order=4):
    """Corpus BLEU (x100) from summed sacreBLEU statistics [sys_len, ref_len, correct_1..4, total_1..4] along
    the last axis, with sacreBLEU's default 'exp' smoothing; works on any leading shape."""
    stats = np.asarray(stats, dtype=np.float64)
    sys_len, ref_len = stats[..., 0], stats[..., 1]
    correct, total = stats[..., 2:2 + max_order], stats[..., 2 + max_order:2 + 2 * max_order]
    # 'exp' smoothing: the k-th order with no match gets 1 / (2**k * total)
    zeros = np.cumsum(correct == 0, axis=-1)
    precision = np.where(correct > 0, correct / np.maximum(total, 1), 1.0 / (2.0 ** zeros * np.maximum(total, 1)))
    log_mean = np.log(np.where(total > 0, precision, 1e-300)).mean(-1)
    brevity = np.where(sys_len < ref_len, np.exp(1 - ref_len / np.maximum(sys_len, 1e-300)), 1.0)
    return np.where(sys_len > 0, 100.0 * brevity * np.exp(log_mean), 0.0)


def _item_matrix(run, metric):
    if metric not in METRICS:
        return None
    key, _ = METRICS[metric]
    items = run.get("details", {}).get("items", {}).get(key)
    if not items:
        return None
    matrix = np.asarray(items, dtype=np.float64)
    if matrix.ndim == 1:  # per-item scores (CIDEr): a mean, i.e. sum of scores over count of items
        matrix = np.stack([matrix, np.ones_like(matrix)], axis=1)
    return matrix


def paired_comparison(a_runs, b_runs, metric, lower_is_better, seed=0):
    """The difference a - b of the seed-mean test `metric` (see the module doc); None when nothing to compare."""
    key = f"test_{metric}"
    a_by_seed = {r["seed"]: r for r in a_runs if key in r["metrics"]}
    b_by_seed = {r["seed"]: r for r in b_runs if key in r["metrics"]}
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        return None
    diffs = [a_by_seed[s]["metrics"][key] - b_by_seed[s]["metrics"][key] for s in seeds]
    better = (lambda d: d < 0) if lower_is_better else (lambda d: d > 0)
    out = {"metric": metric, "seeds": seeds, "diff": statistics.mean(diffs),
           "a_better": sum(better(d) for d in diffs), "b_better": sum(better(-d) for d in diffs)}
    if len(diffs) > 1:
        out["seed_ci"] = seed_interval(diffs)
    # the bootstrap pairs the seeds whose runs both carry per-item statistics (older runs may not)
    matrices = {s: (_item_matrix(a_by_seed[s], metric), _item_matrix(b_by_seed[s], metric)) for s in seeds}
    itemized = [s for s in seeds if all(m is not None for m in matrices[s])]
    boot = _bootstrap_pairs([matrices[s] for s in itemized], metric, seed)
    if boot:
        out.update(boot, **({"boot_seeds": itemized} if itemized != seeds else {}))
    # significant (docs/results.md): the seed interval excludes 0 *and* the paired bootstrap over test items has
    # p < 0.05; without per-item statistics there is no bootstrap, so no verdict (verdict() says which)
    out["seeds_agree"] = "seed_ci" in out and (out["seed_ci"][0] > 0 or out["seed_ci"][1] < 0)
    out["significant"] = out["seeds_agree"] and boot is not None and boot["p"] < 0.05
    return out


def verdict(result):
    """"significant", "not significant", or why there is none: "one seed" (no interval over seeds) or "no per-item
    statistics" (no paired bootstrap). The one rule of every table (docs/results.md)."""
    if result.get("seed_ci") is None:
        return "one seed"
    if result.get("boot_ci") is None:
        return "no per-item statistics"
    return "significant" if result["significant"] else "not significant"


def paired_bootstrap(a_runs, b_runs, metric, seed=0, resamples=RESAMPLES):
    """Resample the test items and return the observed difference of seed means, its 95% percentile interval
    and the two-sided p-value of "no difference". Runs are paired by position (the same seed): both runs of a
    pair must have the same items. Seeds that share their test items share the draw; seeds with their own test
    set (speech folds: one test speaker per seed) get their own."""
    pairs = [(_item_matrix(a, metric), _item_matrix(b, metric)) for a, b in zip(a_runs, b_runs)]
    return _bootstrap_pairs(pairs, metric, seed, resamples)


def test_set_key(matrix):
    """What identifies the test set of an item matrix: its items' sizes (tokens, frames, reference lengths: the
    second column) in order, a fingerprint of the data itself; two test sets of equal item count but other
    items (speech folds) never share a bootstrap draw. Matrices without sizes (CIDEr) fall back to the count."""
    sizes = matrix[:, 1] if matrix.shape[1] > 1 else np.zeros(0)
    return len(matrix), hashlib.sha256(np.ascontiguousarray(sizes).tobytes()).hexdigest()


def _bootstrap_pairs(pairs, metric, seed=0, resamples=RESAMPLES):
    """paired_bootstrap on item matrices already read: [(a's, b's) per seed]."""
    if not pairs or any(a is None or b is None or a.shape != b.shape for a, b in pairs):
        return None
    to_metric = METRICS[metric][1]
    rng = np.random.default_rng(seed)
    draws = {}  # test set -> (resamples, items) counts of how often each item is drawn

    def counts(matrix):
        n, key = len(matrix), test_set_key(matrix)
        if key not in draws:
            draws[key] = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                                   for _ in range(resamples)]).astype(np.float64)
        return draws[key]

    observed = np.mean([to_metric(a.sum(0)) - to_metric(b.sum(0)) for a, b in pairs])
    samples = np.mean([to_metric(_weighted(counts(a), a)) - to_metric(_weighted(counts(a), b)) for a, b in pairs],
                      axis=0)
    low, high = np.percentile(samples, [2.5, 97.5])
    # two-sided: how often the resampled difference falls on the other side of zero
    p = min(1.0, 2 * min(np.mean(samples <= 0), np.mean(samples >= 0)))
    return {"boot_diff": float(observed), "boot_ci": (float(low), float(high)), "p": max(float(p), 1.0 / resamples),
            "items": sum(len(a) for a, _ in pairs), "resamples": resamples}


def _weighted(counts, matrix):
    """counts @ matrix, summed in one fixed order: BLAS's order depends on its threads and CPU kernels, which moved
    the intervals' last digits between re-renders of the same runs."""
    return np.einsum("rn,nk->rk", counts, matrix, optimize=False)
