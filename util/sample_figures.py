"""Figures of one sample, drawn with PIL and numpy: the maps figure (drawing step, probability and entropy of
every position per scale, entropy against drawing order) and the GIF of the image forming step by step."""
import functools
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from util.images import to_uint8, upscale_nearest

VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
SCALE_COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf']
UNDRAWN = (40, 40, 40)
MIN_LOG10_PROB = -4.0  # lower end of the probability colour scale
PANEL, IMAGE, PLOT_W, GAP, TEXT = 96, 192, 320, 8, 16  # figure layout, px
FRAME_MS, LAST_FRAME_MS = 400, 2000
MIN_FRAME_SIDE = 128


@functools.lru_cache(maxsize=None)
def font():
    return ImageFont.load_default(size=12)


def colormap(values, lo, hi):
    """(h, w) floats -> (h, w, 3) uint8 viridis over [lo, hi]; NaN -> UNDRAWN."""
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.stack([np.interp(t, np.linspace(0, 1, len(VIRIDIS)), VIRIDIS[:, c]) for c in range(3)], -1)
    rgb[np.isnan(values)] = UNDRAWN
    return rgb.astype(np.uint8)


def heat_panel(values, lo, hi, size=PANEL):
    return Image.fromarray(colormap(values, lo, hi)).resize((size, size), Image.NEAREST)


def colorbar(lo, hi, height=PANEL, width=12):
    """Vertical bar, hi at the top, with its end values written beside it."""
    bar = Image.new('RGB', (width + 40, height), 'white')
    ramp = np.linspace(hi, lo, height)[:, None].repeat(width, 1)
    bar.paste(Image.fromarray(colormap(ramp, lo, hi)), (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.text((width + 3, 0), f'{hi:g}', fill='black', font=font())
    draw.text((width + 3, height - TEXT), f'{lo:g}', fill='black', font=font())
    return bar


def entropy_plot(steps, entropies, vocab_size, size=(PLOT_W, IMAGE)):
    """Mean entropy (log10 units) of the positions drawn at each step, one line per scale, with a bar from the
    25th to the 75th percentile. steps, entropies: [(s, s)] per scale."""
    w, h = size
    left, right, top, bottom = 34, 8, TEXT + 2, 30
    last = max(int(steps[-1].max()), 1)
    ymax = math.log10(vocab_size)
    fig = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(fig)

    def xy(step, value):
        return (left + (w - left - right) * step / last, h - bottom - (h - top - bottom) * min(value / ymax, 1))

    draw.text((left, 0), 'entropy (log10) vs drawing step', fill='black', font=font())
    draw.rectangle([left, top, w - right, h - bottom], outline='black')
    draw.text((2, top), f'{ymax:.1f}', fill='black', font=font())
    draw.text((2, h - bottom - TEXT), '0', fill='black', font=font())
    draw.text((left, h - bottom + 2), '0', fill='black', font=font())
    draw.text((w - right - 20, h - bottom + 2), str(last), fill='black', font=font())
    for i, (step, entropy) in enumerate(zip(steps, entropies)):
        color = SCALE_COLORS[i % len(SCALE_COLORS)]
        order, values = step.reshape(-1), entropy.reshape(-1) / math.log(10)
        points = []
        for t in np.unique(order):
            at_t = values[order == t]
            p25, p75 = np.percentile(at_t, [25, 75])
            draw.line([xy(t, p25), xy(t, p75)], fill=color)
            points.append(xy(t, at_t.mean()))
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((w - right - 44, top + 2 + 13 * i), f'{step.shape[0]}x{step.shape[1]}', fill=color, font=font())
    return fig


def maps_figure(image, steps, probs, entropies, vocab_size):
    """The maps figure of one sample as a PIL image.

    image: (H, W, 3) uint8; steps, probs, entropies: [(s, s)] numpy per scale (global drawing step,
    probability of the drawn code, entropy in nats of the distribution it was drawn from)."""
    rows = [('drawing step', [s.astype(float) for s in steps], 0, int(steps[-1].max())),
            ('log10 p(drawn code)', [np.log10(np.maximum(p, 1e-30)) for p in probs], MIN_LOG10_PROB, 0),
            ('entropy (log10 units)', [e / math.log(10) for e in entropies], 0, round(math.log10(vocab_size), 1))]
    row_h = TEXT + PANEL + TEXT + GAP
    width = GAP + max(IMAGE + GAP + PLOT_W, len(steps) * (PANEL + GAP) + 52) + GAP
    fig = Image.new('RGB', (width, GAP + IMAGE + GAP + len(rows) * row_h), 'white')
    draw = ImageDraw.Draw(fig)
    fig.paste(Image.fromarray(image).resize((IMAGE, IMAGE), Image.BICUBIC), (GAP, GAP))
    fig.paste(entropy_plot(steps, entropies, vocab_size), (GAP + IMAGE + GAP, GAP))
    y = GAP + IMAGE + GAP
    for title, maps, lo, hi in rows:
        draw.text((GAP, y), title, fill='black', font=font())
        x = GAP
        for values in maps:
            fig.paste(heat_panel(values, lo, hi), (x, y + TEXT))
            draw.text((x, y + TEXT + PANEL), f'{values.shape[0]}x{values.shape[1]}', fill='black', font=font())
            x += PANEL + GAP
        fig.paste(colorbar(lo, hi), (x, y + TEXT))
        y += row_h
    return fig


@torch.no_grad()
def formation_frames(autoenc, codes, steps, size):
    """One frame per drawing step: the current scale decoded from the codes drawn so far (cells not drawn yet
    hold the previous scale's code vectors, upscaled) beside the map of the drawn cells, newest brightest.

    codes, steps: [(s, s)] long tensors of one sample per scale; size: displayed side in px (at least
    MIN_FRAME_SIDE, so that small images stay visible and the caption fits)."""
    size = max(size, MIN_FRAME_SIDE)
    frames, prev = [], None
    total = int(steps[-1].max()) + 1
    for code, step in zip(codes, steps):
        side = code.shape[-1]
        vecs = autoenc.codes_to_latents(code[None])  # (1, E, s, s)
        base = torch.zeros_like(vecs) if prev is None else autoenc.rescale_latents(prev, side)
        ts = step.unique()  # this scale's steps, ascending
        drawn = step[None] <= ts[:, None, None]  # (T, s, s)
        latents = torch.where(drawn[:, None], vecs, base)  # (T, E, s, s)
        images = to_uint8(upscale_nearest(autoenc.decode(latents), size))  # (T, size, size, 3)
        for t, image, mask in zip(ts.tolist(), images, drawn):
            order = step.float().masked_fill(~mask, torch.nan).cpu().numpy()  # not drawn yet: NaN
            frame = Image.new('RGB', (2 * size + GAP, size + TEXT + 4), 'white')
            frame.paste(Image.fromarray(image), (0, 0))
            frame.paste(heat_panel(order, int(ts[0]), int(ts[-1]), size), (size + GAP, 0))
            ImageDraw.Draw(frame).text((2, size + 2), f'scale {side}x{side}, step {t + 1}/{total}', fill='black',
                                       font=font())
            frames.append(frame)
        prev = vecs
    return frames


def save_gif(frames, path):
    """Animated GIF, looping, the last frame held longer; written atomically."""
    tmp = f'{path}.tmp'
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    frames[0].save(tmp, format='GIF', save_all=True, append_images=frames[1:], duration=durations, loop=0)
    os.replace(tmp, path)
