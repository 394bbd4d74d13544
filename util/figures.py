"""Figures of samples and of the scan order, drawn with matplotlib's object API on the Agg canvas (no pyplot,
so no global state changes): the maps figure of one sample (drawing step, probability and entropy of every
position per scale, entropy against drawing step), the scan-order figure, and the GIF of an image forming step
by step (PIL frames, heat maps coloured by matplotlib's viridis)."""
import functools
import math
import textwrap

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from util.atomic import atomic_write
from util.images import to_uint8, upscale_nearest

CMAP = 'viridis'
UNDRAWN = (40, 40, 40)  # colour of positions not drawn (NaN), RGB
MIN_LOG10_PROB = -4.0  # lower end of the probability colour scale
PANEL_IN = 1.5  # side of one heat-map panel in the matplotlib figures, inches
CAPTION_CHARS_PER_IN = 13  # about how many caption characters fit in an inch at CAPTION_PT
CAPTION_PT = 9
FRAME_GAP, FRAME_TEXT = 8, 16  # GIF frame layout, px
FRAME_MS, LAST_FRAME_MS = 400, 2000
MIN_FRAME_SIDE = 128
MAPS_PANEL, MAPS_BAR = 96, 12  # the app's maps image: side of a panel, width of a colour bar, px


def scale_name(values):
    """'4x4' for a (4, 4) map."""
    return f'{values.shape[0]}x{values.shape[1]}'


def new_figure(width, height):
    """A Figure of width x height inches with its own Agg canvas and constrained layout."""
    figure = Figure(figsize=(width, height), layout='constrained')
    FigureCanvasAgg(figure)
    return figure


@functools.lru_cache(maxsize=None)
def heat_cmap():
    """Viridis with NaN (not drawn) in UNDRAWN grey (a new colormap; the registered one is unchanged)."""
    return matplotlib.colormaps[CMAP].with_extremes(bad=np.array(UNDRAWN) / 255)


def heat_map(ax, values, lo, hi, title):
    """Draw (s, s) values on ax over [lo, hi], ticks off; returns the image for a colour bar."""
    image = ax.imshow(values, cmap=heat_cmap(), vmin=lo, vmax=hi, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return image


def entropy_plot(ax, steps, entropies, vocab_size):
    """Mean entropy (log10 units) of the positions drawn at each step, one line per scale, with a bar from the
    25th to the 75th percentile. steps, entropies: [(s, s)] per scale; NaN positions are left out."""
    for step, entropy in zip(steps, entropies):
        order, values = step.reshape(-1), entropy.reshape(-1) / math.log(10)  # (s*s,)
        keep = np.isfinite(order) & np.isfinite(values)
        order, values = order[keep], values[keep]
        ts = np.unique(order)
        means = np.array([values[order == t].mean() for t in ts])
        quartiles = np.array([np.percentile(values[order == t], [25, 75]) for t in ts]).reshape(-1, 2)  # (T, 2)
        line, = ax.plot(ts, means, marker='o', markersize=3, label=scale_name(step))
        ax.vlines(ts, quartiles[:, 0], quartiles[:, 1], color=line.get_color(), linewidth=1)
    ax.set_ylim(0, math.log10(vocab_size))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('drawing step')
    ax.set_ylabel('entropy (log10 units)')
    ax.set_title('entropy vs drawing step (bars: 25-75th percentile)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title='scale', fontsize=8, title_fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))


def map_rows(steps, probs, entropies, vocab_size):
    """The three rows of a maps figure: (label, [(s, s)] values per scale, lo, hi) for the drawing step, log10
    p(drawn code) and the entropy in log10 units (see maps_figure for the arguments)."""
    last = max(float(np.nanmax(s)) for s in steps)
    return [('drawing step', [s.astype(float) for s in steps], 0, last),
            ('log10 p(drawn code)', [np.log10(np.maximum(p, 1e-30)) for p in probs], MIN_LOG10_PROB, 0),
            ('entropy (log10 units)', [e / math.log(10) for e in entropies], 0, math.log10(vocab_size))]


def maps_figure(image, steps, probs, entropies, vocab_size):
    """The maps figure of one sample: the image, entropy against drawing step, then one row of heat maps per
    quantity (drawing step, log10 p(drawn code), entropy) with one panel per scale and one colour bar per row.

    image: (H, W, 3) uint8; steps, probs, entropies: [(s, s)] numpy per scale, ascending (global drawing step,
    probability of the drawn code, entropy in nats of the distribution it was drawn from); NaN = not drawn.
    Axes: image, plot, 3 x len(steps) heat maps, 3 colour bars."""
    rows = [(*row, ticks) for row, ticks in zip(map_rows(steps, probs, entropies, vocab_size),
                                                 (MaxNLocator(integer=True), None, None))]
    top_h, row_h = 2.8, PANEL_IN + 0.3
    figure = new_figure(max(7.5, len(steps) * PANEL_IN + 1.5), top_h + len(rows) * row_h)
    top, bottom = figure.subfigures(2, 1, height_ratios=[top_h, len(rows) * row_h])
    image_ax, plot_ax = top.subplots(1, 2, width_ratios=[1, 2])
    image_ax.imshow(image)
    image_ax.set_axis_off()
    entropy_plot(plot_ax, steps, entropies, vocab_size)
    grid = bottom.subplots(len(rows), len(steps), squeeze=False)  # (rows, scales) of axes
    for axes, (label, maps, lo, hi, ticks) in zip(grid, rows):
        images = [heat_map(ax, values, lo, hi, scale_name(values)) for ax, values in zip(axes, maps)]
        bar = bottom.colorbar(images[-1], ax=list(axes), shrink=0.9, aspect=12, ticks=ticks)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=8)
    return figure


def likelihood_figure(image, reconstruction, bits_maps, title):
    """An image's likelihood: the image and its reconstruction from the codes, then the bits of every position's
    code (its negative log2-probability) as one heat map per scale, on one colour scale.

    image, reconstruction: (H, W, 3) uint8; bits_maps: [(s, s)] numpy per scale, ascending."""
    figure = new_figure(max(6.0, 2 * PANEL_IN + len(bits_maps) * PANEL_IN + 1.0), PANEL_IN + 1.0)
    axes = figure.subplots(1, 2 + len(bits_maps))
    for ax, picture, name in zip(axes[:2], (image, reconstruction), ('input', 'reconstruction')):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    hi = max(float(m.max()) for m in bits_maps)
    images = [heat_map(ax, values, 0, hi, f'{scale_name(values)}: {values.sum():.1f} bits')
              for ax, values in zip(axes[2:], bits_maps)]
    bar = figure.colorbar(images[-1], ax=list(axes[2:]), shrink=0.9, aspect=12)
    bar.set_label('bits of the code', fontsize=8)
    bar.ax.tick_params(labelsize=8)
    figure.suptitle(title, fontsize=10)
    return figure


def scan_order_figure(step_maps, rank_map, steps_per_scale):
    """The scan-order figure: the sampling step of every position at each scale, and the rank of every position
    in the checkerboard order at the top scale, all coloured from first (dark) to last (yellow).

    step_maps: [(side, (side, side) float step within the scale)] per scale; rank_map: (top, top) rank."""
    top = rank_map.shape[0]
    panels = [(f'{side}x{side}: step', values, steps_per_scale - 1) for side, values in step_maps]
    panels.append((f'{top}x{top}: rank', np.asarray(rank_map, float), top * top - 1))
    width = len(panels) * PANEL_IN + 1.0
    figure = new_figure(width, PANEL_IN + 1.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]  # (panels,)
    images = [heat_map(ax, values, 0, hi, title) for ax, (title, values, hi) in zip(axes, panels)]
    bar = figure.colorbar(images[-1], ax=list(axes), shrink=0.8, aspect=12, ticks=[0, top * top - 1])
    bar.ax.set_yticklabels(['first', 'last'], fontsize=8)
    bar.set_label('drawing order', fontsize=8)
    caption = (f'dark = drawn first, yellow = drawn last ({steps_per_scale} steps per scale, positions of one '
               'step drawn in parallel)')
    figure.supxlabel(textwrap.fill(caption, int(width * CAPTION_CHARS_PER_IN)), fontsize=CAPTION_PT)
    return figure


def curves_figure(curves, xlabel, ylabel, title, line=None):
    """Lines with error bars, one per name: curves = {name: (x, y, yerr or None)}, x ascending; line = (y, label)
    adds a dashed horizontal line (a ceiling). A title too long for the width is wrapped."""
    figure = new_figure(6.0, 4.0)
    ax = figure.subplots()
    for name, (x, y, yerr) in curves.items():
        ax.errorbar(x, y, yerr=yerr, marker='o', markersize=4, capsize=3, label=name)
    if line is not None:
        ax.axhline(line[0], color='black', linestyle='--', linewidth=1, label=line[1])
    ax.set_xscale('log', base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title('\n'.join(textwrap.wrap(title, 72)), fontsize=10)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    return figure


def save_figure(figure, path, dpi=100):
    """Write figure as a PNG atomically."""
    with atomic_write(path) as f:
        figure.savefig(f, format='png', dpi=dpi)


def figure_array(figure, dpi=100):
    """The figure as save_figure would draw it, as an (H, W, 3) uint8 array (in memory)."""
    figure.set_dpi(dpi)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


@functools.lru_cache(maxsize=None)
def font():
    return ImageFont.load_default(size=12)


def heat_panel(values, lo, hi, size, width=None):
    """(h, w) floats -> (size, size) PIL image (width x size with width), viridis over [lo, hi], NaN in UNDRAWN
    grey."""
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)  # NaN stays NaN -> the bad colour
    rgb = heat_cmap()(t, bytes=True)[..., :3]  # (h, w, 3) uint8
    return Image.fromarray(rgb).resize((width or size, size), Image.NEAREST)


def maps_image(image, steps, probs, entropies, vocab_size, panel=MAPS_PANEL):
    """The maps of one sample as an (H, W, 3) uint8 array drawn with PIL in milliseconds (the app's; maps_figure
    is the matplotlib figure of main_sample.py): the image, the scale of each column, then one row per quantity
    of map_rows with one panel per scale, nearest-neighbour enlarged to panel px, and a colour bar with its
    range. Arguments as for maps_figure."""
    rows = map_rows(steps, probs, entropies, vocab_size)
    line, column = FRAME_TEXT + 4, panel + FRAME_GAP  # px
    canvas = Image.new('RGB', (len(steps) * column + MAPS_BAR + 60, panel + line + len(rows) * (line + panel)),
                       'white')
    draw = ImageDraw.Draw(canvas)
    canvas.paste(Image.fromarray(image).resize((panel, panel), Image.NEAREST), (0, 0))
    for j, values in enumerate(steps):
        draw.text((j * column, panel + 2), scale_name(values), fill='black', font=font())
    y = panel + line
    for label, maps, lo, hi in rows:
        draw.text((0, y + 2), f'{label}, {lo:g} to {hi:.3g}', fill='black', font=font())
        y += line
        for j, values in enumerate(maps):
            canvas.paste(heat_panel(values, lo, hi, panel), (j * column, y))
        x = len(maps) * column
        canvas.paste(heat_panel(np.linspace(hi, lo, panel)[:, None], lo, hi, panel, width=MAPS_BAR), (x, y))
        draw.text((x + MAPS_BAR + 4, y), f'{hi:.3g}', fill='black', font=font())
        draw.text((x + MAPS_BAR + 4, y + panel - FRAME_TEXT), f'{lo:g}', fill='black', font=font())
        y += panel
    return np.asarray(canvas)


@torch.no_grad()
def formation_stages(autoenc, codes, steps, size):
    """The decoded stages of a sample forming, step by step (the model's work of formation_frames): per drawing
    step, the current scale decoded from the codes drawn so far (cells not drawn yet hold the previous scale's
    code vectors, upscaled) and the drawing step of the drawn cells.

    codes, steps: [(s, s)] long tensors of one sample per scale; size: displayed side in px (at least
    MIN_FRAME_SIDE, so that small images stay visible and the caption fits). Returns [(side, step of the frame,
    (size, size, 3) uint8 image, (s, s) float drawing steps, NaN where not drawn yet, first and last step of the
    scale)] per frame, and the total number of steps."""
    size = max(size, MIN_FRAME_SIDE)
    stages, prev = [], None
    for code, step in zip(codes, steps):
        side = code.shape[-1]
        vecs = autoenc.codes_to_latents(code[None])  # (1, E, s, s)
        base = torch.zeros_like(vecs) if prev is None else autoenc.rescale_latents(prev, side)
        ts = step.unique()  # this scale's steps, ascending
        drawn = step[None] <= ts[:, None, None]  # (T, s, s)
        latents = torch.where(drawn[:, None], vecs, base)  # (T, E, s, s)
        images = to_uint8(upscale_nearest(autoenc.decode(latents), size))  # (T, size, size, 3)
        orders = step.float()[None].masked_fill(~drawn, torch.nan).cpu().numpy()  # (T, s, s), not drawn: NaN
        stages += [(side, t, image, order, int(ts[0]), int(ts[-1])) for t, image, order in zip(ts.tolist(), images,
                                                                                               orders)]
        prev = vecs
    return stages, int(steps[-1].max()) + 1


def formation_frames(stages, total):
    """One PIL frame per stage of formation_stages: the decoded image beside the map of the drawn cells, newest
    brightest, with the scale and step written below."""
    frames = []
    for side, t, image, order, first, last in stages:
        size = image.shape[0]
        frame = Image.new('RGB', (2 * size + FRAME_GAP, size + FRAME_TEXT + 4), 'white')
        frame.paste(Image.fromarray(image), (0, 0))
        frame.paste(heat_panel(order, first, last, size), (size + FRAME_GAP, 0))
        ImageDraw.Draw(frame).text((2, size + 2), f'scale {side}x{side}, step {t + 1}/{total}', fill='black',
                                   font=font())
        frames.append(frame)
    return frames


def write_gif(frames, f):
    """Write PIL RGB frames to the binary file f as an animated GIF, looping, the last frame held longer. Each
    frame gets its own 256-colour palette by the fast octree method, without dithering (3x faster than PIL's
    default; the frames are flat colours)."""
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    frames = [frame.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for frame in frames]
    frames[0].save(f, format='GIF', save_all=True, append_images=frames[1:], duration=durations, loop=0)


def save_gif(frames, path):
    """write_gif to path, atomically."""
    with atomic_write(path) as f:
        write_gif(frames, f)
