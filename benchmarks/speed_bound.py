"""The bound of a training step on this machine: its matrix products (Task.training_products), each timed alone
at its own shape and precision, and nothing else. A row's fraction of it says how much of the step is the
arithmetic that cannot be avoided."""
import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def product_seconds(m, k, n, dtype, device, repeats=15):
    """Median seconds of one (m, k) @ (k, n) product."""
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_bound(task, precisions, device):
    """{precision: {"tok_s", "step_ms", "gflop", "products": [{"shape", "times", "gflop_s"}]}}, or None when the
    task states no products."""
    stated = task.training_products()
    if stated is None:
        return None
    stated_products, items = stated
    merged = {}  # the same shape in several layers: timed once
    for m, k, n, times in stated_products:
        merged[(m, k, n)] = merged.get((m, k, n), 0) + times
    products = [(*shape, times) for shape, times in merged.items()]
    bound = {}
    for precision in precisions:
        rows, seconds = [], 0.0
        for m, k, n, times in products:
            took = product_seconds(m, k, n, DTYPES[precision], device)
            seconds += took * times
            rows.append({"shape": [m, k, n], "times": times, "gflop_s": 2 * m * k * n / took / 1e9})
        gflop = sum(2 * m * k * n * times for m, k, n, times in products) / 1e9
        bound[precision] = {"tok_s": items / seconds, "step_ms": seconds * 1e3, "gflop": gflop, "products": rows}
    return bound


def bound_text(bound):
    """One line per precision: the step's FLOPs, its products' time at the measured rates, and the rate at each
    shape."""
    lines = []
    for precision, b in bound.items():
        shapes = "; ".join(f"{_shape(p)}: {p['gflop_s']:,.0f}" for p in b["products"])
        lines.append(f"- bound in {precision}: {b['gflop']:.1f} GFLOP a step, {b['step_ms']:.1f} ms at the rates "
                     f"measured (GFLOP/s, m x k x n: {shapes}) = **{b['tok_s']:,.0f} tok/s**")
    return lines


def _shape(product):
    shape = "x".join(map(str, product["shape"]))
    return shape if product["times"] == 1 else f"{shape} ({product['times']} times)"


def fraction_of_bound(bound, impl, tok_s):
    """A training row's tok/s as a fraction of the bound in its precision (peers run fp32), or None."""
    precision = "bf16" if "-bf16" in impl else "fp32"
    if not bound or precision not in bound or tok_s is None:
        return None
    return tok_s / bound[precision]["tok_s"]
