"""Offline quality probe: a small CNN classifier trained on a dataset's own images, no download needed.

It scores generated samples by class consistency (share assigned to the requested class) and a Frechet
distance, precision and recall in its pooled penultimate features (evaluation.sample_quality.probe_report).
Training augments the images with a random zoom in [1, 1.15], shift and horizontal flip, which covers the 1.1x
TenCrop views the generator is trained on.
"""
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from util.adm_metrics import frechet_distance, gaussian_stats
from util.checkpoint import CheckpointError, load_checkpoint, load_matching_state_dict, save_checkpoint
from util.images import from_uint8

PROBE_WIDTH = 32  # channels of the first block; features have 4 * PROBE_WIDTH
MAX_ZOOM = 1.15  # training augmentation: zoom in [1, MAX_ZOOM]
MAX_SHIFT = 0.0625  # training augmentation: shift up to this fraction of the side, beyond what zoom frees


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ClassProbe(nn.Module):
    """Small CNN classifier: 4 conv blocks (the first three stride 2) + global average pool + linear.

    Input (B, 3, S, S) in [-1, 1], any S (adaptive pooling); `classes` and `image_size` describe its training.
    Channels-last weights and activations (about 20% faster on a CPU).
    """

    def __init__(self, classes, image_size, width=PROBE_WIDTH, generator=None):
        super().__init__()
        self.classes = list(classes)
        self.image_size = image_size
        self.width = width
        self.val_accuracy = None  # set by fit_probe and load_probe
        self.stages = nn.Sequential(
            _block(3, width, 2), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2),
            _block(4 * width, 4 * width, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, len(self.classes))
        self._init_weights(generator)
        self.to(memory_format=torch.channels_last)

    def _init_weights(self, generator):
        """PyTorch's default scale (kaiming_uniform_, a=sqrt(5)), drawn from generator; zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def config(self):
        return dict(classes=self.classes, image_size=self.image_size, width=self.width)

    def features(self, x):
        return self.stages(x.contiguous(memory_format=torch.channels_last))  # (B, 4 * width)

    def forward(self, x):
        return self.head(self.features(x))  # (B, classes)


def to_model_input(images, image_size, device):
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> float (B, 3, S, S) on device, bilinear-resized."""
    x = torch.as_tensor(images).to(device)
    if x.dtype == torch.uint8:
        x = from_uint8(x)  # (B, 3, H, W)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f'images must be uint8 (B, H, W, 3) or float (B, 3, H, W), got {tuple(x.shape)} {x.dtype}')
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x.float(), size=(image_size, image_size), mode='bilinear', antialias=True,
                          align_corners=False)
    return x.float()


def random_views(x, generator):
    """Random zoom in [1, MAX_ZOOM], shift and horizontal flip per image of x (B, 3, S, S) (bilinear, border)."""
    b = len(x)
    rand = torch.rand(b, 4, generator=generator).to(x.device)  # zoom, shift x, shift y, flip
    scale = 1 / (1 + (MAX_ZOOM - 1) * rand[:, 0])  # fraction of the image the view spans
    shift = (1 - scale + 2 * MAX_SHIFT)[:, None] * (2 * rand[:, 1:3] - 1)  # (B, 2), normalized coordinates
    flip = torch.where(rand[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


@torch.no_grad()
def probe_outputs(probe, images, device, batch_size=256):
    """(logits (N, classes), features (N, F)) as float32 CPU tensors, in eval mode, for images as to_model_input."""
    probe.eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        f = probe.features(to_model_input(images[start:start + batch_size], probe.image_size, device))
        feats.append(f.float().cpu())
        logits.append(probe.head(f).float().cpu())
    return torch.cat(logits), torch.cat(feats)


def class_consistency(logits, labels):
    """Share of rows whose argmax is the requested label."""
    return (logits.argmax(1) == torch.as_tensor(labels, dtype=torch.long)).float().mean().item()


def feature_frechet(feats_a, feats_b):
    """Frechet distance between Gaussians fitted to two (N, F) feature sets."""
    return frechet_distance(*gaussian_stats(np.asarray(feats_a, np.float64)),
                            *gaussian_stats(np.asarray(feats_b, np.float64)))


def load_probe(path, device, classes=None, image_size=None):
    """A ClassProbe from a save_probe checkpoint (weights_only), in eval mode on device.

    With classes / image_size given, a checkpoint trained for others is a CheckpointError naming both.
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or 'config' not in ckpt or 'state_dict' not in ckpt:
        raise CheckpointError(f'{path}: not a class-probe checkpoint (no config / state_dict)')
    config = ckpt['config']
    if classes is not None and list(classes) != config['classes']:
        raise CheckpointError(f'{path}: class probe trained for classes {config["classes"]}, '
                              f'but the data has {list(classes)}; delete it or use another path')
    if image_size is not None and image_size != config['image_size']:
        raise CheckpointError(f'{path}: class probe trained at {config["image_size"]} px, wanted {image_size} px; '
                              f'delete it or use another path')
    probe = ClassProbe(**config)
    load_matching_state_dict(probe, ckpt['state_dict'], path)
    probe.val_accuracy = ckpt.get('val_accuracy')
    return probe.to(device).eval()


def fit_probe(images, labels, val_images, val_labels, classes, image_size, device, epochs=20, batch_size=128,
              lr=3e-3, seed=0, log=print):
    """A ClassProbe trained on uint8 images (N, S, S, 3) with labels (N,), scored on the val arrays; returns
    it in eval mode with val_accuracy set. Deterministic from seed on a CPU (for a fixed thread count)."""
    start = time.time()
    generator = torch.Generator().manual_seed(seed)
    probe = ClassProbe(classes, image_size, generator=generator).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch)
    labels_t = torch.from_numpy(labels)
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = random_views(to_model_input(images[idx.numpy()], image_size, device), generator)  # (B, 3, S, S)
            loss = F.cross_entropy(probe(x), labels_t[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f'class probe: non-finite loss {loss.item()} at epoch {epoch}, step {step}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        probe.val_accuracy = class_consistency(probe_outputs(probe, val_images, device)[0], val_labels)
        log(f'class probe: epoch {epoch + 1}/{epochs} loss {total_loss / steps_per_epoch:.4f} '
            f'val accuracy {probe.val_accuracy:.4f} ({time.time() - start:.0f} s)')
    return probe.eval()


def save_probe(probe, path, **training):
    """The probe's weights, config and val accuracy (and the training settings given) to path, atomically."""
    save_checkpoint({'state_dict': probe.state_dict(), 'val_accuracy': probe.val_accuracy, 'config': probe.config,
                     'train': training}, path)
