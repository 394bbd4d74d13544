"""Deterministic, resumable global batches, split across ranks and accumulation steps."""
import torch


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batches of indices for one rank. Global batch k of an epoch is perm[k*G:(k+1)*G] with perm a
    permutation drawn from (seed, epoch) and G = batch_per_rank * world_size; rank r takes its r-th slice.
    The last partial global batch is dropped. set_epoch(epoch, start) resumes at global batch `start`."""

    def __init__(self, num_items, batch_per_rank, rank=0, world_size=1, seed=0):
        if num_items < batch_per_rank * world_size:
            raise ValueError(f'{num_items} training items are fewer than one global batch '
                             f'({batch_per_rank} x {world_size} processes)')
        self.num_items, self.batch, self.rank, self.world_size, self.seed = (num_items, batch_per_rank, rank,
                                                                             world_size, seed)
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self):
        return self.batch * self.world_size

    @property
    def batches_per_epoch(self):
        return self.num_items // self.global_batch

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def rows(self):
        """(first row of this rank in the global batch, global batch size)."""
        return self.rank * self.batch, self.global_batch

    def __len__(self):
        return self.batches_per_epoch - self.start

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.num_items, generator=gen)
        for k in range(self.start, self.batches_per_epoch):
            first = k * self.global_batch + self.rank * self.batch
            yield perm[first:first + self.batch].tolist()
