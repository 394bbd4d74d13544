"""Editing with the checkerboard sampler: in-painting, out-painting and class-conditional editing.

The known region of an image (a pixel mask, True = keep) becomes a pyramid of known codes: the image with the
region to redraw blanked (filled with the mean colour of the kept pixels, so that the removed content cannot
reach the kept codes through the encoder's receptive field) is encoded at every scale, and a cell of a scale
counts as known when every pixel it overlaps is kept (the strict rule: a coarse code summarizes its whole
region, so a cell that overlaps the redrawn region would carry part of what is being replaced). The sampler
then keeps those codes at their steps and draws the rest as usual, every step conditioning on all the codes
kept or drawn so far; the coarse scales give the new content its global context (docs/model.md §7).
"""
import torch
import torch.nn.functional as F


def cell_mask(keep, side):
    """(B, H, W) bool pixel mask -> (B, side, side) bool: a cell is known when every pixel it overlaps is kept."""
    return ~F.adaptive_max_pool2d((~keep).float()[:, None], side)[:, 0].bool()


def blank(images, keep):
    """Images (B, 3, H, W) with the pixels not kept set to the mean colour of the kept ones (0 where none is)."""
    weights = keep[:, None].float()  # (B, 1, H, W)
    fill = (images * weights).sum((2, 3), keepdim=True) / weights.sum((2, 3), keepdim=True).clamp_min(1)
    return torch.where(keep[:, None], images, fill)


@torch.no_grad()
def known_pyramid(model, images, keep):
    """(codes, masks): [(B, s, s)] long codes of the blanked images and bool known-cell masks, per scale.
    Each image is encoded on its own, so its codes do not depend on the batch."""
    blanked = blank(images, keep)
    per_image = [model.codes_from_images(x[None]) for x in blanked]
    codes = [torch.cat(scale) for scale in zip(*per_image)]
    return codes, [cell_mask(keep, side) for side in model.sides]


def edit(model, images, keep, settings, labels=None, **sample_kwargs):
    """Sample with SampleSettings, the known region of images (B, 3, H, W) in [-1, 1] kept; keep (B, H, W)
    bool. labels (B,) for a class-conditional model (the class of the new content); sample_kwargs (seeds,
    decode) go to model.sample."""
    if images.shape[-2:] != (model.img_size, model.img_size) or keep.shape != (len(images), *images.shape[-2:]):
        raise ValueError(f'edit: images must be (B, 3, {model.img_size}, {model.img_size}) with a (B, '
                         f'{model.img_size}, {model.img_size}) mask, got {tuple(images.shape)} and {tuple(keep.shape)}')
    codes, masks = known_pyramid(model, images, keep)
    return model.sample(settings, labels=labels, batch_size=len(images), known_codes=codes, known_mask=masks,
                        **sample_kwargs)
