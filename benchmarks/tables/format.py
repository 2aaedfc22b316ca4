"""How the tables print numbers: a metric's direction, mean ± std, intervals, p-values and a run's rate."""
import statistics

LOWER_IS_BETTER = ("ppl", "loss", "ce")  # the other metrics (accuracy, BLEU, CIDEr, ...) are better higher


def fmt(values):
    """Mean ± std of a list of numbers as the tables print it ("—" for none, the value alone for one)."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "—"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def interval_text(pair):
    return f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def p_value_text(p):
    """A bootstrap p-value as the tables print it (the smallest p of 2,000 resamples reads "< 0.001")."""
    return "< 0.001" if p <= 0.001 else f"{p:.3f}"


def p_text(run):
    """The run's rate as tables print it: p, and zoneout's cell rate when it differs ("0.05, cells 0.5")."""
    config = run.get("config", {})
    p, cell = run.get("dropout", config.get("dropout")), config.get("zoneout_cell")
    return f"{p:g}" + (f", cells {cell:g}" if cell is not None and cell != p else "")


def seeds_phrase(seeds):
    """"seed 3", "seeds 1,2": the seeds with their noun."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ",".join(map(str, seeds))


def counted(n, noun):
    """"1 run", "3 runs": a count and its noun."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
