"""The table of benchmarks.speed (results/<task>/speed.md) and the names of its rows."""
from core import SCHEMES
from benchmarks.tables.task_table import SPEED_KEYS, threads_text
from benchmarks.tables.uncommitted import uncommitted_lines
from core.provenance import code_version, cpu_text, fp32_math_text, malloc_text

COLUMNS = {"train_tok_s": "train tok/s", "eval_tok_s": "eval tok/s", "beam12_sent_s": "beam 12 sent/s",
           "beam1_sent_s": "beam 1 sent/s", "peak_mb": "peak memory MB"}  # other job names are shown as they are
SPEED_PRECISIONS = ("fp32", "bf16")  # tf32 is a process-wide switch: it cannot be interleaved with fp32 rows


def row_name(variant, precision):
    """A scheme's row: "zaremba" in fp32, "zaremba-bf16" under bf16 autocast."""
    return variant if precision == "fp32" else f"{variant}-{precision}"


def scheme_of(impl):
    """The scheme of a row name ("zaremba-bf16+graphs" -> "zaremba"); a peer's name for a peer."""
    base = impl.split("+")[0]
    for precision in SPEED_PRECISIONS[1:]:
        base = base.removesuffix(f"-{precision}")
    return base


def _shape(cfg):
    parts = [f"batch {cfg['batch_size']}"] if "batch_size" in cfg else []
    if "layers" in cfg and "hidden" in cfg:
        parts.append(f"{cfg['layers']}x{cfg['hidden']}")
    parts += [f"{k} {cfg[k]}" for k in ("bptt", "emb", "decode_batch_size") if k in cfg]
    return ", ".join(parts + [f"p={cfg['dropout']:g} for the dropout schemes"])


def _precision_text(task_cls, entry):
    precisions = entry.get("precisions", ["fp32"])
    if precisions == ["fp32"]:
        return ""
    text = (f"; precision {' and '.join(precisions)} (rows `<scheme>-bf16`: forward passes under bf16 autocast, "
            "loss and softmax in fp32; peers in fp32 as published)")
    return text + (_bf16_quality_text(task_cls) if "bf16" in precisions else "")


def _bf16_quality_text(task_cls):
    """Where the task's quality in bf16 is measured (Task.bf16_quality), or that it is not: the rows are speed alone."""
    if task_cls.bf16_quality:
        return f"; quality in bf16: {task_cls.bf16_quality}"
    metrics = " or ".join([task_cls.main_metric] + [label for _, label in task_cls.extra_test_metrics])
    return (f"; **quality in bf16 not measured**: the bf16 rows time an untrained model on random data, and no "
            f"{metrics} of a model trained or run in bf16 has been compared with fp32")


def _peer_text(entry, peer):
    """The p the peers were timed at, as the entry records it (`peer_dropout`; for runs from before it was recorded,
    read afterwards from the code at their commit, which `peer_dropout_note` says)."""
    if peer is None:
        return ""
    if "peer_dropout" not in entry:
        return f"; `{peer}`'s p not recorded"
    p, note = entry["peer_dropout"], entry.get("peer_dropout_note")
    note = f" ({note})" if note else ""
    if p == entry["config"]["dropout"]:
        return f"; `{peer}` at the same p{note}"
    if p == 0:
        return (f"; **`{peer}` ran at p=0, its dropout off**{note}: its rows are a reference without dropout, "
                "not like for like")
    return f"; **`{peer}` ran at p={p:g}**{note}: its rows are not like for like"


def machine_text(prov):
    """The GPU, or the CPU with its capability and bf16 support, of a run's provenance."""
    return prov.get("gpu") or cpu_text(prov)


INTRO = ("Items per second (tokens for training and evaluation, sentences for decoding) on random data of the "
         "preset's shape: training is forward, backward, clip and optimizer step through the real Trainer; evaluation "
         "is the forward pass. Peak memory: training the same batches, on GPU the most torch allocated, on CPU the "
         "peak resident size of a fresh process (torch itself included). Produced by `python -m benchmarks.speed`; "
         "median of interleaved repeats. Each section is one run on one machine (its heading names the CPU's vector "
         "capability and whether it has native bf16): compare rows within a section.")


def speed_markdown(task_cls, entries, uncommitted=None):
    """The speed table; `uncommitted`: {commit: why} of its sections from uncommitted code (benchmarks.tables.uncommitted)."""
    lines = [f"# {task_cls.name} / speed", "", INTRO + (" " + task_cls.speed_notes if task_cls.speed_notes else ""), ""]
    timed = [e for e in entries if e.get("kind") != "trained"]
    for i, entry in enumerate(timed):
        lines += _section(task_cls, entry, uncommitted or {}, _newer_alike(entry, timed[i + 1:]))
    trained = [e for e in entries if e.get("kind") == "trained"]
    if trained:
        lines += _trained_section(trained)
    return "\n".join(lines)


def _setup(entry):
    prov = entry["provenance"]
    return (entry["preset"], prov.get("gpu") or cpu_text(prov), prov.get("torch_threads"),
            tuple(entry.get("precisions", ["fp32"])))


def _newer_alike(entry, later):
    """The newest later section of the same preset, machine, threads and precisions that times every row this one
    does (so this one is history), or None."""
    alike = [e for e in later if _setup(e) == _setup(entry) and set(entry["results"]) <= set(e["results"])]
    return alike[-1] if alike else None


def _section(task_cls, entry, uncommitted, newer=None):
    """One run's rows against its peer (the first implementation that is no scheme: the published reference)."""
    prov, results = entry["provenance"], entry["results"]
    hw = prov.get("gpu") or f"{cpu_text(prov)}, {threads_text(prov['torch_threads'])}"
    jobs = list(dict.fromkeys(job for r in results.values() for job in r))
    peer = next((impl for impl in results if scheme_of(impl) not in SCHEMES), None)
    compared = [job for job in jobs if peer and job in results[peer]]
    bound = entry.get("bound")
    header = ["implementation"]
    for job in jobs:
        header += [COLUMNS.get(job, job)] + ([f"vs {peer}"] if job in compared else [])
        header += ["of bound"] if bound and job == "train_tok_s" else []
    lines = [f"## preset `{entry['preset']}` on {prov['device']} ({hw})", ""]
    if newer is not None:
        lines += [f"**Superseded** by the section of {code_version(newer['provenance'])} ({newer['finished']}) "
                  "below: the same preset, machine, threads and precisions, timed again; kept as history, quote "
                  "the newest.", ""]
    lines += [f"{_shape(entry['config'])}; {entry['steps']} steps x {entry['repeats']} repeats"
             f"{_precision_text(task_cls, entry)}"
             f"{_peer_text(entry, peer)}.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for impl, row in results.items():
        cells = [impl]
        for job in jobs:
            value = row.get(job)
            cells.append("—" if value is None else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}")
            if job in compared:
                cells.append("—" if value is None else f"{value / results[peer][job]:.2f}x")
            if bound and job == "train_tok_s":
                fraction = fraction_of_bound(bound, impl, value)
                cells.append("—" if fraction is None else f"{fraction:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    if bound:
        lines += ["", "Of bound: the row's training speed over the step's matrix products alone, each timed at its "
                  "shape in the row's precision (`benchmarks/timing/bound.py`):"] + bound_text(bound)
    software = f"torch {prov['torch']}{fp32_math_text(prov)}{malloc_text(prov)}"
    note = f" ({prov['note']})" if prov.get("note") else ""
    lines += ["", f"`{prov['command']}` — {code_version(prov)}, {software}, {entry['finished']}{note}", ""]
    return lines + [line for text in uncommitted_lines([entry], uncommitted) for line in (text, "")]


def _trained_section(trained):
    lines = ["## Decoding a trained model", "",
             "The task's own decoding (beam search as in the results, its preset's width and batch) of a trained "
             "checkpoint over a real split: real lengths and early stops, unlike the worst case above. "
             "`python -m benchmarks.speed --checkpoint ...`; median of the repeats. One row per checkpoint, "
             "split, machine, threads and commit, so a row timed with older code stays beside the new one.", "",
             "| checkpoint | split | beam | speed | device | threads | commit |", "|---|---|---|---|---|---|---|"]
    for entry in trained:
        prov = entry["provenance"]
        speed = ", ".join(f"{value:,.1f} {SPEED_KEYS[key]}" for key, value in entry["results"].items())
        note = f" ({prov['note']})" if prov.get("note") else ""
        lines.append(f"| `{entry['checkpoint']}` | {entry['split']} | {entry['config'].get('beam', '—')} | "
                     f"{speed} | {prov['device']} ({machine_text(prov)}) | {prov['torch_threads']} | "
                     f"{code_version(prov)}{note} |")
    return lines + [""]


def bound_text(bound):
    """One line per precision: the step's FLOPs, its products' time at the measured rates, and the rate at each
    shape."""
    lines = []
    for precision, b in bound.items():
        shapes = "; ".join(f"{_product_shape(p)}: {p['gflop_s']:,.0f}" for p in b["products"])
        lines.append(f"- bound in {precision}: {b['gflop']:.1f} GFLOP a step, {b['step_ms']:.1f} ms at the rates "
                     f"measured (GFLOP/s, m x k x n: {shapes}) = **{b['tok_s']:,.0f} tok/s**")
    return lines


def _product_shape(product):
    shape = "x".join(map(str, product["shape"]))
    return shape if product["times"] == 1 else f"{shape} ({product['times']} times)"


def fraction_of_bound(bound, impl, tok_s):
    """A training row's tok/s as a fraction of the bound in its precision (peers run fp32), or None."""
    precision = "bf16" if "-bf16" in impl else "fp32"
    if not bound or precision not in bound or tok_s is None:
        return None
    return tok_s / bound[precision]["tok_s"]
