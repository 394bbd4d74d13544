"""Token cache: every image's 10 TenCrop views coded at all pyramid scales by the frozen autoencoder.

cache_dir holds
  manifest.json        what the cache holds (see cache_manifest); "complete": false until every rank is done
  codes_{side}.npy     (N, 10, side, side) int16 (int32 if vocab_size > 32767), one memory-mapped array per side
  labels.npy           (N,) int64
  progress_{rank}.json while creating: images done in rank's contiguous shard (written after the arrays are
                       flushed, so a resumed run redoes at most the batch that was in flight)
Batches are laid out from each shard's start, so a resumed run encodes exactly the batches an uninterrupted
run would have.
"""
import contextlib
import glob
import hashlib
import json
import logging
import os

import numpy as np
import torch
from numpy.lib.format import open_memmap

from data.transforms import NUM_VIEWS, view_index
from util.atomic import atomic_write
from util.errors import DataError
from util.file_lock import file_lock

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
LABELS = 'labels.npy'


class TokenCacheMismatch(DataError):
    """A token cache on disk that does not hold what the caller needs."""


def autoencoder_fingerprint(ae):
    """sha256 hex digest of the autoencoder's state-dict tensors' bytes, in sorted key order."""
    digest = hashlib.sha256()
    for _, tensor in sorted(ae.state_dict().items()):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def code_dtype(vocab_size):
    return 'int16' if vocab_size <= np.iinfo(np.int16).max else 'int32'


def cache_manifest(classes, num_images, fingerprint, sides, image_size, vocab_size):
    """The manifest of a complete cache with these contents."""
    if len(set(sides)) != len(sides):
        raise ValueError(f'token cache: duplicate scale sides in {sides}')
    return dict(format_version=FORMAT_VERSION, fingerprint=fingerprint, sides=list(sides), image_size=image_size,
                vocab_size=vocab_size, dtype=code_dtype(vocab_size), num_views=NUM_VIEWS, num_images=num_images,
                classes=list(classes), complete=True)


def codes_path(cache_dir, side):
    return os.path.join(cache_dir, f'codes_{side}.npy')


def _write_json(path, obj):
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, indent=1)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def check_manifest(cache_dir, expected, exact=False):
    """The manifest in cache_dir, checked against `expected` (a dict of manifest fields); None if there is none.

    Not exact: the cached sides must include expected['sides']; other given fields must be equal.
    Exact: every field but "complete" must be equal. Raises TokenCacheMismatch with all reasons.
    """
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    found = _read_json(path)
    reasons = [f'{key}: cache has {found.get(key)!r}, expected {value!r}' for key, value in expected.items()
               if key not in ('complete', 'sides') and found.get(key) != value]
    if exact and found.get('sides') != expected['sides']:
        reasons.append(f'sides: cache has {found.get("sides")}, expected {expected["sides"]}')
    missing = sorted(set(expected['sides']) - set(found.get('sides', [])))
    if missing and not exact:
        reasons.append(f'sides {missing} are not cached (cache has {found.get("sides")})')
    if reasons:
        state = 'token cache' if found.get('complete') else 'incomplete token cache'
        raise TokenCacheMismatch(f'{state} in {cache_dir} does not match: {"; ".join(reasons)} '
                                 f'(delete it or point to another cache folder)')
    return found


def shard_range(num_images, rank, world_size):
    """Contiguous shard [start, stop) of rank."""
    return num_images * rank // world_size, num_images * (rank + 1) // world_size


def _prepare(cache_dir, manifest):
    """Rank 0: create the arrays and write the incomplete manifest, unless a matching one is there."""
    if check_manifest(cache_dir, manifest, exact=True) is not None:
        return
    os.makedirs(cache_dir, exist_ok=True)
    n = manifest['num_images']
    for side in manifest['sides']:
        open_memmap(codes_path(cache_dir, side), mode='w+', dtype=manifest['dtype'],
                    shape=(n, NUM_VIEWS, side, side)).flush()
    open_memmap(os.path.join(cache_dir, LABELS), mode='w+', dtype=np.int64, shape=(n,)).flush()
    _write_json(os.path.join(cache_dir, MANIFEST), {**manifest, 'complete': False})


def _encode_shard(cache_dir, manifest, dataset, ae, device, batch_size, num_workers, rank, world_size, on_batch):
    """Encode rank's shard from where its progress file says, flushing arrays before each progress update."""
    start, stop = shard_range(manifest['num_images'], rank, world_size)
    progress_path = os.path.join(cache_dir, f'progress_{rank}.json')
    done = 0
    if os.path.exists(progress_path):
        progress = _read_json(progress_path)
        if (progress['start'], progress['stop'], progress['batch_size']) == (start, stop, batch_size):
            done = progress['done']
    sides, size, vocab_size = manifest['sides'], manifest['image_size'], manifest['vocab_size']
    codes = [open_memmap(codes_path(cache_dir, side), mode='r+') for side in sides]
    labels = open_memmap(os.path.join(cache_dir, LABELS), mode='r+')
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(start + done, stop)),
                                         batch_size=batch_size, num_workers=num_workers, shuffle=False)
    log.info('token cache rank %d: images %d..%d, resuming at %d', rank, start, stop, start + done)
    ae.eval()
    with torch.no_grad():
        for views, batch_labels, indices in loader:
            B = views.shape[0]
            if views.shape[1:] != (NUM_VIEWS, 3, size, size):
                raise ValueError(f'token cache: dataset items are {tuple(views.shape[1:])}, '
                                 f'expected {(NUM_VIEWS, 3, size, size)} (all TenCrop views)')
            pyramid = ae.pyramid_codes(views.reshape(B * NUM_VIEWS, 3, size, size).to(device), sides)
            rows = indices.numpy()
            for array, side, code in zip(codes, sides, pyramid):
                code = code.reshape(B, NUM_VIEWS, side, side).cpu()
                if code.min() < 0 or code.max() >= vocab_size:
                    raise ValueError(f'token cache: codes outside [0, {vocab_size}) at side {side}')
                array[rows] = code.numpy()
                array.flush()
            labels[rows] = batch_labels.numpy()
            labels.flush()
            done += B
            _write_json(progress_path, dict(start=start, stop=stop, batch_size=batch_size, done=done))
            if on_batch is not None:
                on_batch(done, stop - start)


def _finalize(cache_dir, manifest, world_size):
    """Rank 0: check that every shard is done, then mark the manifest complete and drop progress files."""
    for rank in range(world_size):
        start, stop = shard_range(manifest['num_images'], rank, world_size)
        path = os.path.join(cache_dir, f'progress_{rank}.json')
        progress = _read_json(path) if os.path.exists(path) else {}
        if progress.get('done') != stop - start or progress.get('start') != start:
            raise RuntimeError(f'token cache {cache_dir}: rank {rank} has not finished images {start}..{stop}')
    _write_json(os.path.join(cache_dir, MANIFEST), manifest)
    for path in glob.glob(os.path.join(cache_dir, 'progress_*.json')):
        os.remove(path)


def create_token_cache(cache_dir, dataset, ae, sides, image_size, vocab_size, device, batch_size=64,
                       num_workers=0, rank=0, world_size=1, barrier=None, on_batch=None):
    """Encode all 10 views of every image at `sides` into cache_dir; returns the manifest.

    dataset: items (views (10, 3, image_size, image_size) in [-1, 1], label, index) and a `classes` list,
    e.g. ImageFolderDataset(..., all_views=True). Under torchrun every rank calls this with its rank and
    barrier=torch.distributed.barrier; rank r encodes shard_range(N, r, world_size). Rerunning after an
    interruption resumes; a complete matching cache is left as is; a mismatching one is refused.
    on_batch(done, shard_size) is called after each batch is saved. Separate one-process jobs creating the
    same cache (two sweep processes) take turns on the file lock CACHE_DIR.lock; the ranks of one job
    coordinate through barrier instead.
    """
    barrier = barrier or (lambda: None)
    manifest = cache_manifest(dataset.classes, len(dataset), autoencoder_fingerprint(ae), sides, image_size,
                              vocab_size)
    one_job = file_lock(f'{os.path.normpath(cache_dir)}.lock') if world_size == 1 else contextlib.nullcontext()
    with one_job:
        found = check_manifest(cache_dir, manifest, exact=False)
        if found is not None and found['complete']:
            return found
        if rank == 0:
            _prepare(cache_dir, manifest)
        barrier()
        check_manifest(cache_dir, manifest, exact=True)
        _encode_shard(cache_dir, manifest, dataset, ae, device, batch_size, num_workers, rank, world_size, on_batch)
        barrier()
        if rank == 0:
            _finalize(cache_dir, manifest, world_size)
        barrier()
    return manifest


class TokenCacheDataset(torch.utils.data.Dataset):
    """A complete token cache; item = ([LongTensor (s, s) per side in `sides`], label).

    The view of image `index` is view_index(seed, epoch, index): deterministic and resumable.
    Call set_epoch(epoch) before each epoch (workers must not be persistent, so they see it).
    """

    def __init__(self, cache_dir, fingerprint, sides, image_size, seed=0):
        expected = dict(format_version=FORMAT_VERSION, fingerprint=fingerprint, sides=list(sides),
                        image_size=image_size, complete=True)
        manifest = check_manifest(cache_dir, expected)
        if manifest is None or not manifest['complete']:
            state = 'incomplete (rerun the cache creation to finish it)' if manifest else 'missing'
            raise TokenCacheMismatch(f'token cache in {cache_dir} is {state}')
        self.cache_dir = cache_dir
        self.sides = list(sides)
        self.classes = manifest['classes']
        self.targets = np.load(os.path.join(cache_dir, LABELS))
        self.seed = seed
        self.epoch = 0
        self._codes = None  # memory maps, opened lazily in each process

    def __getstate__(self):
        # a pickled np.memmap would carry its whole contents to DataLoader workers
        return {**self.__dict__, '_codes': None}

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        if self._codes is None:
            self._codes = [np.load(codes_path(self.cache_dir, side), mmap_mode='r') for side in self.sides]
        view = view_index(self.seed, self.epoch, index)
        codes = [torch.from_numpy(array[index, view].astype(np.int64)) for array in self._codes]  # (s, s) each
        return codes, int(self.targets[index])
