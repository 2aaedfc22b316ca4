"""Data-parallel training with torch.distributed (launched by torchrun): NCCL on GPU, gloo on CPU.

Every rank walks the same sequence of global batches (the batch order comes from an RNG state all ranks share)
and trains on its shard of each (rows split along the batch dimension: the LM's parallel streams, a bucket's
sentences, images or utterances). The gradient of the global batch's loss is rebuilt exactly: each rank's loss
is weighted by its share of the loss's normaliser (`StepOutput.norm`: sentences, streams or scored frames),
the gradients are summed over ranks, so the global batch, the learning rate, clipping and the optimizer step
are the preset's whatever the world size. Dropout masks come from a per-rank RNG stream (ranks must not drop
the same units of their different rows). Rank 0 alone writes checkpoints, logs and results.

Outside torchrun (no WORLD_SIZE, or 1) nothing here changes a run.
"""
import datetime
import os

import torch
import torch.distributed as dist

# a collective waiting longer than this (a rank died) raises on the others instead of hanging
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("RNNREG_DIST_TIMEOUT_S", "600")))


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main():
    return rank() == 0


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device="auto"):
    """Join the process group torchrun describes; returns the device of this rank ("cuda:<local rank>" on GPU).
    A collective that waits longer than $RNNREG_DIST_TIMEOUT_S seconds (a rank that died) raises instead of
    hanging."""
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return torch.device(f"cuda:{local}") if cuda else torch.device("cpu")


def shard(batch):
    """This rank's rows of a batch: every tensor whose first dimension is the batch size is split into
    world-size contiguous pieces (sizes differ by at most one; a piece may be empty)."""
    world = world_size()
    if world == 1:
        return batch
    rows = batch[0].size(0)
    return type(batch)(t.tensor_split(world)[rank()] if torch.is_tensor(t) and t.dim() and t.size(0) == rows else t
                       for t in batch)


def shard_range(count):
    """This rank's contiguous share of item indices 0..count-1 (rank order is item order)."""
    return torch.arange(count).tensor_split(world_size())[rank()].tolist()


def gather_lists(items):
    """Every rank's list, concatenated in rank order (on every rank)."""
    if world_size() == 1:
        return list(items)
    parts = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def rows(batch):
    return batch[0].size(0)


def all_reduce_sum(value, device):
    """Sum a float over ranks."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


def any_rank(flags, device):
    """For each flag, whether any rank has it set: one all-reduce for all of them."""
    if world_size() == 1:
        return tuple(bool(flag) for flag in flags)
    tensor = torch.tensor([float(flag) for flag in flags], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tuple(bool(x > 0) for x in tensor.tolist())


def sum_gradients(model):
    """Sum every parameter's gradient over ranks (one flat all-reduce); a rank without rows sends zeros."""
    if world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def broadcast_parameters(model):
    """Rank 0's parameters to every rank (they are initialised from the same seed; this makes sure)."""
    if world_size() == 1:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, 0)


def all_reduce_totals(totals, device):
    """Sum the statistics dict of an evaluation pass over ranks."""
    if world_size() == 1:
        return totals
    keys = sorted(totals)
    tensor = torch.tensor([float(totals[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: (int(v) if isinstance(totals[k], int) else float(v)) for k, v in zip(keys, tensor.tolist())}


def gather_rng_states(state):
    """Every rank's RNG `state` (its dropout stream), for rank 0's checkpoint."""
    if world_size() == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(world_size())]
    if dist.get_backend() == "nccl":  # NCCL gathers CUDA tensors only
        _gather_via_cuda(states, state)
    else:
        dist.all_gather(states, state)
    return states


def _gather_via_cuda(states, state):
    gathered = [torch.empty_like(state, device="cuda") for _ in states]
    dist.all_gather(gathered, state.cuda())
    for out, got in zip(states, gathered):
        out.copy_(got.cpu())


def barrier():
    if world_size() > 1:
        dist.barrier()
