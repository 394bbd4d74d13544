"""Reconstruction quality on the quantization pyramid: per-scale PSNR, codebook usage and perplexity, rFID
from Inception features, and a picture of originals beside their reconstructions at every scale."""
import numpy as np
import torch

from train_ae_codebook.codebook import perplexity
from util.adm_metrics import frechet_distance, gaussian_stats
from util.images import save_grid, to_uint8, upscale_nearest


@torch.no_grad()
def reconstruct(autoencoder, images, side):
    """(image at side * stride px, codes (B, side, side), reconstruction) of images (B, 3, H, W) in [-1, 1]."""
    x = autoencoder.pyramid_image(images, side)
    codes = autoencoder.quantize_latents(autoencoder.encode(x))
    return x, codes, autoencoder.decode(autoencoder.codes_to_latents(codes))


def psnr(recon, target):
    """PSNR in dB per image (B,), images in [-1, 1] (the reconstruction clamped), peak = the full range."""
    mse = ((recon.clamp(-1, 1) - target) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_pyramid(autoencoder, batches, sides, inception=None):
    """Metrics over batches of images (B, 3, H, W), H = max(sides) * stride.

    Returns {side: {'psnr', 'usage', 'perplexity'[, 'rfid']}} and 'all': usage and perplexity of the codes of
    every scale together. usage = fraction of the V codes used at least once; rFID only with an Inception
    feature function (uint8 (B, H, W, 3) -> {'pool': (B, D)}), between the resized originals and their
    reconstructions."""
    device = next(autoencoder.parameters()).device
    V = autoencoder.n_embed
    psnr_sum = dict.fromkeys(sides, 0.0)
    counts = {side: torch.zeros(V, device=device) for side in sides}
    features = {side: ([], []) for side in sides}
    num_images = 0
    for images in batches:
        images = images.to(device)
        num_images += len(images)
        for side in sides:
            x, codes, y = reconstruct(autoencoder, images, side)
            psnr_sum[side] += float(psnr(y, x).sum())
            counts[side] += torch.bincount(codes.flatten(), minlength=V)
            if inception is not None:
                features[side][0].append(inception(to_uint8(x))['pool'])
                features[side][1].append(inception(to_uint8(y))['pool'])
    results = {}
    for side in sides:
        results[side] = {'psnr': psnr_sum[side] / num_images, 'usage': float((counts[side] > 0).float().mean()),
                         'perplexity': perplexity(counts[side])}
        if inception is not None:
            real, recon = (gaussian_stats(np.concatenate(fs)) for fs in features[side])
            results[side]['rfid'] = frechet_distance(*real, *recon)
    total = sum(counts.values())
    results['all'] = {'usage': float((total > 0).float().mean()), 'perplexity': perplexity(total)}
    return results


@torch.no_grad()
def save_pyramid_picture(autoencoder, images, sides, path, display_size=128):
    """One column per image; per side, top scale first, a row of originals then a row of reconstructions,
    all enlarged (nearest) to display_size px."""
    size = max(display_size, images.shape[-1])
    rows = []
    for side in reversed(sides):
        x, _, y = reconstruct(autoencoder, images, side)
        rows += [upscale_nearest(x, size), upscale_nearest(y.clamp(-1, 1), size)]
    return save_grid(torch.cat(rows), path, nrow=len(images))


def format_metrics(results):
    """A table of evaluate_pyramid's results, one line per scale (top first), then all scales together."""
    sides = sorted(k for k in results if k != 'all')
    rfid = 'rfid' in results[sides[0]]
    lines = ['scale  psnr_dB  usage  perplexity' + ('  rFID' if rfid else '')]
    for side in reversed(sides):
        r = results[side]
        lines.append(f"{side:>2}x{side:<2} {r['psnr']:8.2f}  {r['usage']:5.3f}  {r['perplexity']:10.1f}"
                     + (f"  {r['rfid']:.2f}" if rfid else ''))
    lines.append(f"all            {results['all']['usage']:5.3f}  {results['all']['perplexity']:10.1f}")
    return '\n'.join(lines)


def flat_metrics(results):
    """evaluate_pyramid's results as one flat dict of numbers ('val/psnr_4', 'val/usage_all', ...)."""
    return {f'val/{name}_{side}': value for side, r in results.items() for name, value in r.items()}
