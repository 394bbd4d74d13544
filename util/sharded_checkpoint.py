"""Sharded checkpoints (torch.distributed.checkpoint, DCP): every rank writes its own shards, in parallel, and a
checkpoint resumes at any world size, with or without FSDP.

    RUN/checkpoint-last.dcp/
        latest             the name of the last complete save (written atomically, last)
        save-000007/       DCP's files (.metadata, one __R_0.distcp per rank) and meta.pth (the run's
                           non-tensor state: step, schedule, random states, config)

A save killed midway leaves `latest` naming the previous save, which stays loadable; the next save replaces the
partial folder. Reading is safe as load_checkpoint is: DCP's metadata is unpickled with a whitelist of its own
classes and torch's dtypes, its non-tensor values and meta.pth with weights_only=True. The folders must be on
storage every rank sees (one machine, or a shared filesystem across nodes)."""
import io
import os
import pickle
import shutil

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)

from util import distributed
from util.atomic import atomic_write
from util.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

SHARDED_SUFFIX = '.dcp'
POINTER, META = 'latest', 'meta.pth'
WEIGHTS = ('model', 'model_ema')  # the entries a single-file checkpoint also holds


def is_sharded_checkpoint(path):
    return os.fspath(path).endswith(SHARDED_SUFFIX)


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's .metadata: its own dataclasses, torch's dtypes, sizes and layouts, paths; nothing else."""
    MODULES = ('torch.distributed.checkpoint.metadata', 'torch.distributed.checkpoint.filesystem')
    NAMES = {('torch', 'Size'), ('torch.serialization', '_get_layout'), ('pathlib', 'PosixPath'),
             ('pathlib', 'WindowsPath'), ('collections', 'OrderedDict')}

    def find_class(self, module, name):
        allowed = (module in self.MODULES or (module, name) in self.NAMES
                   or (module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name} from a checkpoint metadata file')
        return super().find_class(module, name)


class SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = os.path.join(self.path, '.metadata')
        with open(path, 'rb') as f:
            try:
                metadata = MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError) as e:
                raise CheckpointError(f'{path}: not a readable DCP metadata file ({e})') from None
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DCP's planner, but the non-tensor values are first read with weights_only=True (so only plain data)."""

    def load_bytes(self, read_item, value):
        try:
            torch.load(io.BytesIO(value.getvalue()), weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f'{read_item.dest_index.fqn} in a sharded checkpoint: not plain data, refusing '
                                  f'to unpickle it ({str(e).splitlines()[0]})') from None
        value.seek(0)
        super().load_bytes(read_item, value)


def load_state(state, path, no_dist=None):
    """dcp.load of the save at path into state (in place), read safely, by every rank (no_dist: by this process
    alone; default: when there is no process group); a failure on any rank (a bad or truncated file, data that
    is not plain) is one CheckpointError naming the file."""
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=SafePlanner(),
                 no_dist=not distributed.is_initialized() if no_dist is None else no_dist)
    except CheckpointException as e:
        error = next(iter(e.failures.values()))[0]
        if isinstance(error, CheckpointError):
            raise error from None
        raise CheckpointError(f'{path}: not a readable sharded checkpoint ({type(error).__name__}: '
                              f'{str(error).splitlines()[0] if str(error) else ""})') from None


def latest_save(folder):
    """The path of the last complete save in a sharded checkpoint folder; CheckpointError when none."""
    pointer = os.path.join(folder, POINTER)
    if not os.path.isfile(pointer):
        raise CheckpointError(f'{folder}: no complete sharded checkpoint in it ({POINTER} is missing)')
    with open(pointer) as f:
        path = os.path.join(folder, f.read().strip())
    if not os.path.isfile(os.path.join(path, META)):
        raise CheckpointError(f'{folder}: {POINTER} names {path}, which is incomplete or gone')
    return path


def save_index(folder):
    """The number of the last complete save in folder (0: none)."""
    try:
        return int(os.path.basename(latest_save(folder)).split('-')[1])
    except CheckpointError:
        return 0


def save_sharded(folder, model, optimizer, ema_module, meta):
    """Save model, optimizer and (if not None) EMA state, sharded as they are, and meta (a dict of plain data)
    into a new save in folder; collective: every rank calls it. The previous save is deleted once this one is
    complete."""
    target = os.path.join(folder, f'save-{save_index(folder) + 1:06d}')
    if distributed.is_main():
        shutil.rmtree(target, ignore_errors=True)  # a partial save of a killed run
        os.makedirs(folder, exist_ok=True)
    distributed.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {'model': model_state, 'optimizer': optimizer_state}
    if ema_module is not None:
        state['model_ema'] = get_model_state_dict(ema_module)
    dcp.save(state, checkpoint_id=target, no_dist=not distributed.is_initialized())
    if distributed.is_main():
        save_checkpoint(meta, os.path.join(target, META))
        with atomic_write(os.path.join(folder, POINTER)) as f:
            f.write(os.path.basename(target).encode())
        for name in os.listdir(folder):
            if name.startswith('save-') and name != os.path.basename(target):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    distributed.barrier()


def read_meta(folder):
    """The non-tensor state of the last save in a sharded checkpoint folder."""
    return load_checkpoint(os.path.join(latest_save(folder), META))


def load_sharded(folder, model, optimizer, ema_module):
    """Load the last save of folder into model, optimizer and EMA, resharded to this run's world size (sharded
    or plain modules alike); an EMA missing from the save starts from the weights. Returns the meta dict."""
    path = latest_save(folder)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {'model': model_state, 'optimizer': optimizer_state}
    has_ema = any(key.startswith('model_ema.') for key in SafeReader(path).read_metadata().state_dict_metadata)
    if ema_module is not None and has_ema:
        state['model_ema'] = get_model_state_dict(ema_module)
    load_state(state, path)
    set_state_dict(model, optimizer, model_state_dict=state['model'], optim_state_dict=state['optimizer'])
    if ema_module is not None:
        set_model_state_dict(ema_module, state['model_ema'] if has_ema else get_model_state_dict(model))
    return read_meta(folder)


def read_sharded(folder):
    """A sharded checkpoint as the dict of a single-file one, in one process: its meta, and 'model' and
    'model_ema' (None when not saved) as whole CPU tensors; the optimizer state is left out."""
    path = latest_save(folder)
    reader = SafeReader(path)
    state = {}
    for key, item in reader.read_metadata().state_dict_metadata.items():
        entry, _, name = key.partition('.')
        if entry in WEIGHTS and hasattr(item, 'size'):
            state.setdefault(entry, {})[name] = torch.empty(item.size, dtype=item.properties.dtype)
    load_state(state, path, no_dist=True)
    return {**read_meta(folder), 'model': state.get('model'), 'model_ema': state.get('model_ema')}
