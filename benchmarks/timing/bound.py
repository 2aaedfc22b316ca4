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
