"""Checkpoint I/O: safe loading (weights_only) and atomic saving."""
import argparse
import os
import pickle
import re
import warnings
import zipfile

import torch

from util.atomic import atomic_write
from util.errors import UsageError

SAFE_GLOBALS = [argparse.Namespace]
RESUME_HINT = 'choose another --output_dir (or --resume), or the config it was trained with'
UNSAFE_FLAG = '--unsafe_load'


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used, with a message naming the file and the problem."""


def load_checkpoint(path, allow_unsafe=False, map_location='cpu'):
    """torch.load with weights_only=True (plus argparse.Namespace); a full unpickle only on opt-in."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r'GLOBAL (\S+)', str(e))
        name = found.group(1) if found else 'a non-tensor object'
        if not allow_unsafe:
            raise CheckpointError(
                f'{path}: refusing to unpickle {name} (not allowed with weights_only=True); '
                f'if you trust this file, pass {UNSAFE_FLAG}') from None
        warnings.warn(f'{path}: loading with weights_only=False (unpickles {name}); only do this for trusted files')
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f'{path}: not a readable torch checkpoint (truncated or corrupt?): '
                              f'{str(e).splitlines()[0]}') from None


def save_checkpoint(obj, path):
    """torch.save through util.atomic.atomic_write: the old file stays whole until the new one is complete."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def unwrap_state_dict(checkpoint, path, prefix=None):
    """The state dict inside a plain / {'state_dict'} / {'model'} checkpoint, optionally by key prefix."""
    sd = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f'{path}: no state dict found (expected a dict of tensors, '
                              f"or one under 'state_dict' or 'model')")
    if prefix is not None and any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def load_matching_state_dict(module, state_dict, path, ignore=()):
    """load_state_dict(strict) with one clear error listing missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in ignore)}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    if missing:
        problems.append(f'missing keys {missing[:5]}' + (f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''))
    if unexpected:
        problems.append(f'unexpected keys {unexpected[:5]}'
                        + (f' (+{len(unexpected) - 5} more)' if len(unexpected) > 5 else ''))
    shapes = [(k, tuple(own[k].shape), tuple(v.shape)) for k, v in state_dict.items()
              if k in own and own[k].shape != v.shape]
    if shapes:
        k, want, got = shapes[0]
        problems.append(f'shape mismatch at {k}: model expects {want}, checkpoint has {got}'
                        + (f' (+{len(shapes) - 1} more)' if len(shapes) > 1 else ''))
    if problems:
        raise CheckpointError(f'{path}: checkpoint does not fit the config: ' + '; '.join(problems))
    module.load_state_dict(state_dict, strict=True)


def check_same_model(saved, current, path, ignore=()):
    """CheckpointError naming the first setting in which the model config saved in checkpoint path differs from
    the current one (dotted keys in ignore do not count), with the ways out."""
    saved, current = flatten(saved), flatten(current)
    for key in {**saved, **current}:
        if key not in ignore and saved.get(key) != current.get(key):
            raise CheckpointError(f'{path} holds another model: it was trained with model.{key} = '
                                  f'{saved.get(key)!r}, the config says {current.get(key)!r}; {RESUME_HINT}')


def load_resumed_weights(module, state_dict, path):
    """load_matching_state_dict for a run being resumed: a mismatch names the ways out."""
    try:
        load_matching_state_dict(module, state_dict, path)
    except CheckpointError as e:
        raise CheckpointError(f'{e}; {RESUME_HINT}') from None


def flatten(tree, prefix=''):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat
