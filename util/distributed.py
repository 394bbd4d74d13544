"""Distributed helpers: one process (CPU or one GPU) or torchrun DDP (NCCL on GPU, gloo on CPU)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def uses_cuda(device=None):
    """Whether a run on device ('cpu', 'cuda[:k]' or None: GPU when available) uses CUDA."""
    return torch.cuda.is_available() if device is None else str(device).startswith('cuda')


def init_distributed(device=None, group_of_one=False):
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group under torchrun;
    outside torchrun, a group of this process alone when group_of_one (what FSDP needs to run on one device).

    device: 'cpu', 'cuda' or None (GPU when available). Each rank takes GPU local_rank."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = uses_cuda(device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
    backend = 'nccl' if use_cuda else 'gloo'
    if 'WORLD_SIZE' in os.environ and not dist.is_initialized():  # torchrun, even with one process
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    elif group_of_one and not dist.is_initialized():
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank, world_size, local_rank, dev)


def is_initialized():
    """Whether a process group is up (under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def is_main():
    """Whether this process is rank 0 (or the only one)."""
    return not is_initialized() or dist.get_rank() == 0


def barrier():
    if is_initialized():
        dist.barrier()


def all_reduce_mean(values, device):
    """Mean over ranks of a dict of floats (or 0-d tensors); returns floats."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum(tensor):
    """tensor summed over ranks, in place (unchanged in a single process); returns it."""
    if is_initialized():
        dist.all_reduce(tensor)
    return tensor


def on_every_rank(flag, device):
    """True when flag (a bool) holds on every rank."""
    t = torch.tensor([float(flag)], device=device)
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_gather_objects(obj):
    """List of obj from every rank (just [obj] when not distributed)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup():
    if is_initialized():
        dist.destroy_process_group()
