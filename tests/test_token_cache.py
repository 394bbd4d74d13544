"""Token cache: creation vs direct encoding, resume, ranks, manifest checks and the reading dataset."""
import json
import os
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from data.image_folder import ImageFolderDataset
from data.token_cache import (TokenCacheDataset, TokenCacheMismatch, autoencoder_fingerprint, code_dtype,
                              codes_path, create_token_cache)
from data.transforms import NUM_VIEWS, view_index
from util.file_lock import file_lock

SIZE = 16
SIDES = [1, 2, 4]
VOCAB = 16


class StandInAutoencoder(nn.Module):
    """Codes = average-pooled grey level bucketed into VOCAB levels; counts the images it encodes."""

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(offset))
        self.num_encoded = 0

    def pyramid_codes(self, images, sides):
        assert not self.training and not torch.is_grad_enabled()
        self.num_encoded += images.shape[0]
        grey = images.mean(dim=1, keepdim=True) + self.offset  # (B, 1, H, W)
        return [((F.adaptive_avg_pool2d(grey, s)[:, 0] + 1) / 2 * (VOCAB - 1)).round().clamp(0, VOCAB - 1).long()
                for s in sides]  # (B, s, s) each


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """ImageFolderDataset with all views over 11 random images in 2 classes."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for i in range(11):
        folder = root / 'train' / f'class{i % 2}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    return ImageFolderDataset(root, size=SIZE, all_views=True)


def create(cache_dir, images, ae, **kwargs):
    return create_token_cache(cache_dir, images, ae, SIDES, SIZE, VOCAB, 'cpu', batch_size=3, **kwargs)


def read_arrays(cache_dir):
    return {side: np.load(codes_path(cache_dir, side)) for side in SIDES} | {
        'labels': np.load(os.path.join(cache_dir, 'labels.npy'))}


def direct(ae, views):
    with torch.no_grad():
        return ae.eval().pyramid_codes(views, SIDES)


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_create_matches_direct_encoding(tmp_path, images):
    ae = StandInAutoencoder()
    manifest = create(tmp_path, images, ae)
    assert manifest['complete'] and manifest['num_images'] == 11 and manifest['sides'] == SIDES
    assert manifest['classes'] == ['class0', 'class1'] and manifest['dtype'] == 'int16'
    assert manifest['fingerprint'] == autoencoder_fingerprint(ae)
    assert json.load(open(tmp_path / 'manifest.json')) == manifest
    assert not list(tmp_path.glob('progress_*'))
    arrays = read_arrays(tmp_path)
    assert np.array_equal(arrays['labels'], images.targets)
    for index in range(len(images)):
        views, _, _ = images[index]
        for side, codes in zip(SIDES, direct(ae, views)):
            assert arrays[side].shape == (11, NUM_VIEWS, side, side)
            assert np.array_equal(arrays[side][index], codes.numpy())
    ae.num_encoded = 0
    assert create(tmp_path, images, ae) == manifest and ae.num_encoded == 0  # complete: nothing redone


def test_code_dtype_and_fingerprint():
    assert code_dtype(32767) == 'int16' and code_dtype(32768) == 'int32'
    assert autoencoder_fingerprint(StandInAutoencoder()) == autoencoder_fingerprint(StandInAutoencoder())
    assert autoencoder_fingerprint(StandInAutoencoder()) != autoencoder_fingerprint(StandInAutoencoder(0.5))


def test_interrupted_creation_resumes_to_identical_arrays(tmp_path, images):
    create(tmp_path / 'full', images, StandInAutoencoder())

    def interrupt_after_two_batches(done, total):
        if done == 6:
            raise KeyboardInterrupt

    ae = StandInAutoencoder()
    with pytest.raises(KeyboardInterrupt):
        create(tmp_path / 'resumed', images, ae, on_batch=interrupt_after_two_batches)
    assert not json.load(open(tmp_path / 'resumed' / 'manifest.json'))['complete']
    with pytest.raises(TokenCacheMismatch, match='incomplete'):
        TokenCacheDataset(tmp_path / 'resumed', autoencoder_fingerprint(ae), SIDES, SIZE)
    ae.num_encoded = 0
    create(tmp_path / 'resumed', images, ae)
    assert ae.num_encoded == (11 - 6) * NUM_VIEWS
    assert_same_arrays(read_arrays(tmp_path / 'full'), read_arrays(tmp_path / 'resumed'))


def test_a_second_job_waits_for_the_first_and_encodes_nothing(tmp_path, images):
    """Two one-process jobs creating one cache (two sweep processes) take turns on its lock file."""
    create(tmp_path / 'made', images, StandInAutoencoder())
    cache, second, returned = tmp_path / 'cache', StandInAutoencoder(), []
    with file_lock(f'{cache}.lock'):  # the first job, encoding
        waiting = threading.Thread(target=lambda: returned.append(create(cache, images, second)))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and not cache.exists()
        shutil.copytree(tmp_path / 'made', cache)  # what the first job leaves: the complete cache
    waiting.join(timeout=60)
    assert returned and returned[0]['complete'] and second.num_encoded == 0


def test_two_ranks_match_one_rank(tmp_path, images):
    create(tmp_path / 'one', images, StandInAutoencoder())
    barrier = threading.Barrier(2, timeout=60)
    errors = []

    def run(rank):
        try:
            create(tmp_path / 'two', images, StandInAutoencoder(), rank=rank, world_size=2, barrier=barrier.wait)
        except BaseException as e:  # reported below; the thread would swallow it
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert json.load(open(tmp_path / 'two' / 'manifest.json'))['complete']
    assert_same_arrays(read_arrays(tmp_path / 'one'), read_arrays(tmp_path / 'two'))


def test_mismatching_cache_is_refused(tmp_path, images):
    ae = StandInAutoencoder()
    create(tmp_path, images, ae)
    fingerprint = autoencoder_fingerprint(ae)
    TokenCacheDataset(tmp_path, fingerprint, [4, 1], SIZE)  # a subset of the cached sides is fine
    with pytest.raises(TokenCacheMismatch, match='fingerprint'):
        TokenCacheDataset(tmp_path, autoencoder_fingerprint(StandInAutoencoder(0.5)), SIDES, SIZE)
    with pytest.raises(TokenCacheMismatch, match='image_size'):
        TokenCacheDataset(tmp_path, fingerprint, SIDES, 32)
    with pytest.raises(TokenCacheMismatch, match=r'sides \[8\] are not cached'):
        TokenCacheDataset(tmp_path, fingerprint, SIDES + [8], SIZE)
    with pytest.raises(TokenCacheMismatch, match='fingerprint'):
        create(tmp_path, images, StandInAutoencoder(0.5))
    with pytest.raises(TokenCacheMismatch, match='missing'):
        TokenCacheDataset(tmp_path / 'none', fingerprint, SIDES, SIZE)


def test_dataset_reads_one_deterministic_view(tmp_path, images):
    ae = StandInAutoencoder()
    create(tmp_path, images, ae)
    dataset = TokenCacheDataset(tmp_path, autoencoder_fingerprint(ae), SIDES, SIZE, seed=3)
    arrays = read_arrays(tmp_path)
    assert len(dataset) == 11 and dataset.classes == ['class0', 'class1']
    codes, label = dataset[4]
    assert label == images.targets[4]
    for side, code in zip(SIDES, codes):
        assert code.dtype == torch.long and code.shape == (side, side)
        assert np.array_equal(code.numpy(), arrays[side][4, view_index(3, 0, 4)])
    clone = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker gets: no memory maps inside
    assert clone._codes is None and all(torch.equal(a, b) for a, b in zip(clone[4][0], codes))
    epoch0 = [dataset[i][0][-1] for i in range(11)]
    dataset.set_epoch(1)
    assert any(not torch.equal(a, dataset[i][0][-1]) for i, a in enumerate(epoch0))
    batch_codes, batch_labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert [tuple(c.shape) for c in batch_codes] == [(5, s, s) for s in SIDES] and batch_labels.shape == (5,)
