"""The scan-order figure (docs/scan_order.png): for each scale of a pyramid, the sampling step of every position,
and the rank of every position in the progressive checkerboard order at the top scale.

    python -m tools.scan_order_figure docs/scan_order.png
"""
import sys

from models.checkerboard import checkerboard_order, sampling_step_map, scale_sizes
from util.figures import save_figure, scan_order_figure


def write_scan_order_figure(path, img_size=256, stride=16, ratio=2, steps_per_scale=4):
    """The figure of a 256 px ratio-2 pyramid at 4 steps per scale (by default), written as a PNG."""
    sides = scale_sizes(img_size, stride, ratio)
    figure = scan_order_figure([(s, sampling_step_map(s, steps_per_scale)) for s in sides],
                               checkerboard_order(sides[-1]).numpy().astype(float), steps_per_scale)
    save_figure(figure, path)


if __name__ == '__main__':
    write_scan_order_figure(sys.argv[1] if len(sys.argv) > 1 else 'docs/scan_order.png')
