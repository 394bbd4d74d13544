"""Image conversion and saving: decoded images in [-1, 1] -> uint8 (docs/model.md §7), grids, PNG files."""
import torch
import torchvision
from PIL import Image

from util.atomic import atomic_write


def to_uint8(images):
    """(B, 3, H, W) float, about [-1, 1] -> (B, H, W, 3) uint8 numpy: clamp, then truncate((x+1)/2 * 255)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images):
    """uint8 (..., H, W, 3) array or tensor -> float (..., 3, H, W) in [-1, 1]: the inverse of to_uint8 up to
    its rounding."""
    return torch.as_tensor(images).movedim(-1, -3).float() / 127.5 - 1


def save_png(array, path):
    """Write an (H, W, 3) uint8 array as a PNG, atomically."""
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format='PNG')


def grid_array(images, nrow=8, pad=2, min_side=64):
    """A grid of (B, 3, H, W) images in [-1, 1] as one (H', W', 3) uint8 array; images below min_side pixels are
    enlarged by a whole factor (nearest neighbour), so that small samples stay visible."""
    factor = max(1, min_side // images.shape[-1])
    images = upscale_nearest(images, images.shape[-1] * factor) if factor > 1 else images  # (B, 3, H', W')
    grid = torchvision.utils.make_grid(images.detach().float().clamp(-1, 1).cpu(), nrow=nrow, padding=pad,
                                       normalize=True, value_range=(-1, 1))
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_grid(images, path, nrow=8, pad=2, min_side=64):
    """grid_array written as one PNG; returns path."""
    save_png(grid_array(images, nrow, pad, min_side), path)
    return path


def upscale_nearest(images, size):
    """(B, 3, h, w) -> (B, 3, size, size) by nearest-neighbour, to show small scales beside large ones."""
    return torch.nn.functional.interpolate(images.float(), size=(size, size), mode='nearest')


