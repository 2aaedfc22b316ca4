"""Where the time of a training pass goes: `python -m benchmarks.speed ... --profile` prints torch.profiler's top
ops by self CPU time for one training pass (all --steps batches) of each implementation, after one untimed pass.
Ops are grouped by input shape, so the LM's output layer (the mm/addmm with the vocabulary's 10k columns) and its
softmax stand apart from the LSTM's products; under bf16 the LSTM is aten::mkldnn_rnn_layer in bf16 and the casts
between ops are aten::_to_copy/aten::copy_. An op that autocast casts for is recorded twice, nested (the autocast
layer, then the kernel: aten::mkldnn_rnn_layer shows twice the calls in bf16 but runs once): read Self CPU, not the
call count. Nothing is written to results/: a profile is for looking, not a table.
"""
import torch
from torch.profiler import ProfilerActivity, profile

ROWS = 15  # ops shown per implementation


def profile_training(train, device):
    """The profiler's record of one call of `train` (after one untimed call: oneDNN primitives, allocations)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    train()
    with profile(activities=activities, record_shapes=True) as prof:
        train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof


def print_profiles(impls, device, rows=ROWS):
    """For each implementation ({name: {job: (fn, items)}}, benchmarks.speed.implementations), its training
    job's top `rows` ops by self CPU time."""
    for name, jobs in impls.items():
        prof = profile_training(jobs["train_tok_s"][0], device)
        table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)
        print(f"## {name}: one training pass ({jobs['train_tok_s'][1]:,} tokens), top {rows} ops by self CPU time\n")
        print(table)
