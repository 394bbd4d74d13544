"""The scan-order figure: for each scale of a 256 px ratio-2 pyramid, the sampling step of every position
(4 steps per scale) and, at the top scale, the rank of every position in the progressive checkerboard.

    python -m util.scan_order_figure docs/scan_order.png
"""
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.checkerboard import checkerboard_order, sampling_block_sizes, scale_sizes
from util.images import save_png
from util.sample_figures import font, heat_panel

PANEL, GAP, TEXT = 128, 12, 18


def step_map(side, steps_per_scale):
    """(side, side) sampling step within the scale of each position."""
    sizes = sampling_block_sizes(side * side, steps_per_scale)
    step_of_rank = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return step_of_rank[checkerboard_order(side)].numpy().astype(float)


def scan_order_figure(sides=None, steps_per_scale=4):
    sides = sides or scale_sizes(256, 16, 2)
    panels = [(f'{s}x{s}: step', heat_panel(step_map(s, steps_per_scale), 0, steps_per_scale - 1, PANEL))
              for s in sides]
    top = sides[-1]
    panels.append((f'{top}x{top}: rank', heat_panel(checkerboard_order(top).numpy().astype(float), 0,
                                                     top * top - 1, PANEL)))
    width = len(panels) * (PANEL + GAP)
    figure = Image.new('RGB', (width, PANEL + 2 * TEXT + GAP), 'white')
    draw = ImageDraw.Draw(figure)
    for i, (title, panel) in enumerate(panels):
        x = i * (PANEL + GAP)
        draw.text((x, 0), title, fill='black', font=font())
        figure.paste(panel, (x, TEXT))
    draw.text((0, PANEL + TEXT + 4), f'dark = drawn first, yellow = drawn last ({steps_per_scale} steps per '
              'scale, positions of a step drawn in parallel)', fill='black', font=font())
    return figure


if __name__ == '__main__':
    save_png(np.asarray(scan_order_figure()), sys.argv[1] if len(sys.argv) > 1 else 'docs/scan_order.png')
