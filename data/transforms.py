"""Training augmentation as published: ADM center crop to 1.1 x size, then one of TenCrop(size)'s views.

TenCrop view order (torchvision): 0-4 = top-left, top-right, bottom-left, bottom-right, center;
5-9 = the same five crops of the horizontally flipped image.
"""
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

NUM_VIEWS = 10


def adm_crop_side(size):
    """Side of the ADM center crop that TenCrop(size) cuts from: int(1.1 * size) as in the published code."""
    return int(size * 1.1)


def center_crop_arr(image, side):
    """ADM (guided-diffusion) center crop: BOX-halve while min side >= 2*side, BICUBIC to min side = side, crop."""
    while min(image.size) >= 2 * side:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = side / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def view_index(seed, epoch, index):
    """The TenCrop view (0..9) that image `index` uses in `epoch`; a pure function of its arguments."""
    mixed = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(mixed))
    return int(torch.randint(NUM_VIEWS, (), generator=generator))


def _to_unit_range(crop):
    return TF.to_tensor(crop) * 2 - 1  # (3, size, size) in [-1, 1]


class TenCropView:
    """PIL image -> float tensor (3, size, size) in [-1, 1]: one TenCrop view of the ADM 1.1x center crop."""

    def __init__(self, size):
        self.size = size
        self.crop_side = adm_crop_side(size)

    def ten_crops(self, image):
        """The 10 PIL views of one image, in TenCrop order."""
        return TF.ten_crop(center_crop_arr(image.convert('RGB'), self.crop_side), self.size)

    def all_views(self, image):
        """Float tensor (10, 3, size, size) in [-1, 1], all views in TenCrop order (used by the token cache)."""
        return torch.stack([_to_unit_range(crop) for crop in self.ten_crops(image)])

    def __call__(self, image, view=None, generator=None):
        """One view: `view` in 0..9 if given, else drawn uniformly with `generator`."""
        if view is None:
            view = int(torch.randint(NUM_VIEWS, (), generator=generator))
        if not 0 <= view < NUM_VIEWS:
            raise ValueError(f'TenCropView: view must be in 0..{NUM_VIEWS - 1}, got {view}')
        return _to_unit_range(self.ten_crops(image)[view])
