"""The classifier two-sample test (evaluation/two_sample.py): about 0.5 for two halves of the same real images,
about 1.0 for real images against noise."""
import numpy as np
import pytest

from data.builtin import ensure_builtin_dataset
from data.image_folder import load_real_images
from evaluation.two_sample import two_sample_accuracy


@pytest.fixture(scope='module')
def real(tmp_path_factory):
    root = ensure_builtin_dataset(str(tmp_path_factory.mktemp('two_sample') / 'shapes'), 'shapes32',
                                  train_per_class=20, val_per_class=1)
    images, _, _ = load_real_images(root, 'train', 32, log=lambda message: None)
    return images[np.random.default_rng(0).permutation(len(images))]  # (200, 32, 32, 3), classes mixed


def test_two_halves_of_real_images_are_indistinguishable(real):
    accuracy = two_sample_accuracy(real[:100], real[100:], 32, 'cpu', seed=0, epochs=8)
    assert 0.35 <= accuracy <= 0.65  # 100 held-out images: 0.5 +- 0.05 by chance


def test_real_images_against_noise_are_told_apart(real):
    noise = np.random.default_rng(1).integers(0, 256, real[:100].shape, dtype=np.uint8)
    assert two_sample_accuracy(real[:100], noise, 32, 'cpu', seed=0, epochs=8) >= 0.95


def test_too_few_images_is_an_error(real):
    with pytest.raises(ValueError, match='at least 4 images per set'):
        two_sample_accuracy(real[:3], real[3:6], 32, 'cpu')
