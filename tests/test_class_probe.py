"""Class probe (models.class_probe; evaluation.sample_quality.train_probe, probe_report): training on a tiny synthetic
ImageFolder, checkpoint reuse, consistency and Frechet figures."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from util.checkpoint import CheckpointError
from data.image_folder import load_real_images
from evaluation.sample_quality import probe_report, train_probe
from models.class_probe import feature_frechet, load_probe, probe_outputs
from util.adm_metrics import precision_recall

SIZE = 16
COLOURS = {'blue': (30, 40, 220), 'green': (40, 200, 50), 'red': (220, 40, 30)}  # sorted, as ImageFolder sorts


def write_colour_folder(root, colours, per_split=(('train', 30), ('val', 10))):
    """root/<split>/<colour>/*.png: solid colours with noise, trivially separable."""
    rng = np.random.default_rng(0)
    for split, count in per_split:
        for name, rgb in colours.items():
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(count):
                image = np.clip(np.array(rgb) + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(os.path.join(folder, f'{i:03d}.png'))
    return str(root)


def train_tiny(root, out_path, logs=None):
    log = logs.append if logs is not None else (lambda message: None)
    return train_probe(root, SIZE, 'cpu', out_path, epochs=2, batch_size=16, lr=1e-2, log=log)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(root, checkpoint path, probe, log lines) of a probe trained once for this module."""
    base = tmp_path_factory.mktemp('probe')
    root = write_colour_folder(base / 'data', COLOURS)
    logs = []
    probe = train_tiny(root, str(base / 'probe.pt'), logs)
    return root, str(base / 'probe.pt'), probe, logs


def test_training_reaches_high_accuracy_and_saves(trained):
    root, path, probe, logs = trained
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['config']['classes'] == sorted(COLOURS) and ckpt['config']['image_size'] == SIZE
    assert ckpt['val_accuracy'] == probe.val_accuracy >= 0.95
    assert any('saved' in line for line in logs)


def test_checkpoint_is_reused_not_retrained(trained):
    root, path, probe, _ = trained
    mtime = os.stat(path).st_mtime_ns
    logs = []
    again = train_tiny(root, path, logs)
    assert os.stat(path).st_mtime_ns == mtime
    assert any('not retraining' in line for line in logs) and not any('epoch' in line for line in logs)
    for a, b in zip(probe.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_training_is_deterministic_from_seed(trained, tmp_path):
    root, _, probe, _ = trained
    again = train_tiny(root, str(tmp_path / 'again.pt'))
    for a, b in zip(probe.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_max_images_bounds_what_is_read(trained, tmp_path, monkeypatch):
    root, _, _, _ = trained
    from evaluation import sample_quality
    counts = []

    def spy(*args, **kwargs):
        images, labels, classes = load_real_images(*args, **kwargs)
        counts.append(len(images))
        return images, labels, classes

    monkeypatch.setattr(sample_quality, 'load_real_images', spy)
    probe = train_probe(root, SIZE, 'cpu', str(tmp_path / 'small.pt'), epochs=1, max_images=12, log=lambda m: None)
    assert counts == [12, 12]  # train and val subsets, of 90 and 30 images
    assert torch.load(tmp_path / 'small.pt', weights_only=True)['train']['max_images'] == 12
    val, labels, _ = load_real_images(root, 'val', SIZE)
    report = probe_report(probe, val, labels, root, 'cpu', max_images=12)
    assert counts[2] == 12 and report['real_class_consistency'] == pytest.approx(probe.val_accuracy)


def test_consistency_right_and_wrong_labels(trained):
    root, _, probe, _ = trained
    val, labels, _ = load_real_images(root, 'val', SIZE)  # (30, S, S, 3) uint8
    right = probe_report(probe, val, labels, root, 'cpu')
    wrong = probe_report(probe, val, (labels + 1) % len(COLOURS), root, 'cpu')
    assert right['class_consistency'] == 1.0 == right['real_class_consistency']
    assert wrong['class_consistency'] <= 0.05
    assert right['num_samples'] == len(val) and right['num_real'] == len(val) // 2


def test_the_ceiling_compares_two_disjoint_halves_of_the_val_images(trained):
    """frechet_real, precision_real and recall_real are the figures of real val set B against set A, the two
    disjoint seeded halves; samples identical to set A score as well as it scores against itself."""
    root, _, probe, _ = trained
    val, labels, _ = load_real_images(root, 'val', SIZE)  # the order probe_report reads them in
    feats = probe_outputs(probe, val, 'cpu')[1]
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0)).numpy()
    a, b = order[:15], order[15:30]  # the halves, by hand
    report = probe_report(probe, val, labels, root, 'cpu')
    assert report['frechet_real'] == pytest.approx(feature_frechet(feats[b], feats[a]), rel=1e-6)
    assert (report['precision_real'], report['recall_real']) == precision_recall(feats[a], feats[b])
    same = probe_report(probe, val[a], labels[a], root, 'cpu')
    assert same['num_real'] == 15 and abs(same['frechet']) < 1e-3 < report['frechet_real']


def test_uint8_and_float_inputs_agree_at_any_size(trained):
    root, _, probe, _ = trained
    val, labels, _ = load_real_images(root, 'val', SIZE)
    as_float = torch.from_numpy(val).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, S, S) in [-1, 1]
    from_uint8 = probe_report(probe, val, labels, root, 'cpu')
    assert probe_report(probe, as_float, labels, root, 'cpu') == pytest.approx(from_uint8)
    larger = val.repeat(2, axis=1).repeat(2, axis=2)  # (N, 2S, 2S, 3): resized back to S
    assert probe_report(probe, larger, labels, root, 'cpu')['class_consistency'] == 1.0


def test_frechet_of_features():
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0)).numpy()
    assert abs(feature_frechet(feats, feats)) < 1e-6
    assert feature_frechet(feats, feats + 1) == pytest.approx(8.0, rel=1e-6)  # |mean shift|^2


def test_mismatched_checkpoint_is_a_clear_error(trained, tmp_path):
    _, path, probe, _ = trained
    other = write_colour_folder(tmp_path / 'other', {'cyan': (0, 200, 200), 'magenta': (200, 0, 200)},
                                per_split=(('train', 2), ('val', 2)))
    with pytest.raises(CheckpointError, match='classes'):
        train_tiny(other, path)
    with pytest.raises(ValueError, match='classes'):
        probe_report(probe, np.zeros((2, SIZE, SIZE, 3), np.uint8), [0, 1], other, 'cpu')
    with pytest.raises(CheckpointError, match='px'):
        load_probe(path, 'cpu', image_size=2 * SIZE)
    with pytest.raises(CheckpointError, match='not found'):
        load_probe(str(tmp_path / 'missing.pt'), 'cpu')
