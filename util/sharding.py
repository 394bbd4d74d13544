"""FSDP2 for the generator: every transformer block and the root sharded with torch's `fully_shard` over the
ranks of the process group; the frozen autoencoder stays whole on every rank. Parameters of a sharded module
are DTensors (each rank holds 1/N of every tensor); the optimizer, gradient clipping and the EMA work on them
as they are, the state dicts and checkpoints (util/sharded_checkpoint.py) come out sharded."""
import itertools

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard_generator(model, precision):
    """Shard a CheckerboardGenerator in place, from rank 0's weights (as DDP starts): each of
    model.llama.layers, then the root (embeddings, head, final norm). precision 'bf16': bf16 parameters in
    forward and backward, gradients reduced in fp32."""
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            dist.broadcast(tensor, src=0)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == 'bf16' else MixedPrecisionPolicy())
    frozen = set(model.autoenc.parameters())
    for layer in model.llama.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy, ignored_params=frozen)
    return model


def is_sharded(module):
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(module):
    """The whole state dict of a sharded module, as plain tensors on every rank (a collective)."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


def total_norm(norm):
    """The gradient norm clip_grad_norm_ returns (a DTensor under sharding) as a plain tensor."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
