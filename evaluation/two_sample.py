"""Classifier two-sample test: how well a small classifier, trained to tell two sets of images apart, tells
them apart on held-out images. 0.5 means indistinguishable; 1.0 means every held-out image is told apart.

Unlike class consistency, it does not saturate while the samples still differ from real images in any way
the classifier can learn (Lopez-Paz and Oquab, Revisiting Classifier Two-Sample Tests, ICLR 2017)."""
import numpy as np
import torch

from models.class_probe import fit_probe

CLASSES = ['first', 'second']
BATCH_SIZE = 32  # small batches: hundreds of images still give the classifier (and its batch norms) many steps


def two_sample_accuracy(images_a, images_b, image_size, device, seed=0, epochs=10, log=lambda message: None):
    """Held-out accuracy of a ClassProbe trained to separate uint8 image sets a and b ((N, S, S, 3) each, N
    equal): each set is split in two seeded halves, the classifier is fitted on the first halves and scored on
    the second."""
    n = min(len(images_a), len(images_b))
    if n < 4:
        raise ValueError(f'two_sample_accuracy: need at least 4 images per set, got {len(images_a)} and '
                         f'{len(images_b)}')
    generator = torch.Generator().manual_seed(seed)
    halves = []
    for images in (images_a, images_b):
        order = torch.randperm(len(images), generator=generator)[:n].numpy()
        halves.append((images[order[:n // 2]], images[order[n // 2:]]))
    (train_a, test_a), (train_b, test_b) = halves

    def labelled(a, b):
        return np.concatenate([a, b]), np.repeat(np.arange(2, dtype=np.int64), [len(a), len(b)])

    classifier = fit_probe(*labelled(train_a, train_b), *labelled(test_a, test_b), CLASSES, image_size, device,
                           epochs=epochs, batch_size=BATCH_SIZE, seed=seed, log=log)
    return classifier.val_accuracy
