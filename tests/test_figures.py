"""util.figures: the maps and scan-order figures save as PNGs, the forming GIF has one frame per drawing step,
and an interrupted save leaves the previous file in place."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from util.figures import (formation_frames, formation_stages, maps_figure, maps_image, save_figure, save_gif,
                          scan_order_figure)

SIDES = [1, 2, 4]
VOCAB = 64


def fake_steps():
    """[(s, s)] global drawing steps: 1x1 at step 0, 2x2 at steps 1-2, 4x4 at steps 3-6."""
    return [np.zeros((1, 1), np.int64), np.array([[1, 2], [2, 1]]), np.arange(16).reshape(4, 4) % 4 + 3]


def fake_maps():
    """(image, steps, probabilities, entropies) of a sample, as the maps figures take them."""
    rng = np.random.default_rng(0)
    probs = [rng.uniform(1e-5, 1, (s, s)) for s in SIDES]
    entropies = [rng.uniform(0, math.log(VOCAB), (s, s)) for s in SIDES]
    entropies[2][0, 0] = np.nan  # not drawn
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return image, fake_steps(), probs, entropies


def fake_maps_figure():
    return maps_figure(*fake_maps(), VOCAB)


def test_maps_figure_saves_png(tmp_path):
    figure = fake_maps_figure()
    # image + entropy plot + 3 rows of one heat map per scale + one colour bar per row
    assert len(figure.axes) == 2 + 3 * len(SIDES) + 3
    heat_maps = [ax for ax in figure.axes[2:] if ax.images]  # the colour bars hold no images
    assert [ax.get_title() for ax in heat_maps] == ['1x1', '2x2', '4x4'] * 3
    path = tmp_path / 'maps.png'
    save_figure(figure, path)
    with Image.open(path) as png:
        assert png.format == 'PNG' and png.size[0] > 300 and png.size[1] > 300


def test_maps_image_shows_every_map_in_its_panel():
    image, steps, probs, entropies = fake_maps()
    picture = maps_image(image, steps, probs, entropies, VOCAB, panel=96)
    line, column = 20, 104  # a text line; a panel and its gap
    rows = [96 + 2 * line + i * (96 + line) for i in range(3)]  # top of each row of panels
    assert picture.shape == (96 + line + 3 * (line + 96), 3 * column + 12 + 60, 3)
    assert np.array_equal(picture[:96:3, :96:3], image)  # the image, enlarged x3
    assert tuple(picture[rows[0] + 5, 5]) == (68, 1, 84)  # 1x1 drawn at step 0: the low end of viridis
    assert tuple(picture[rows[0] + 90, 2 * column + 90]) == (253, 231, 36)  # 4x4 [3, 3] at the last step, 6
    assert tuple(picture[rows[2] + 5, 2 * column + 5]) == (40, 40, 40)  # the entropy not drawn: grey
    bar = picture[rows[1]:rows[1] + 96, 3 * column + 6]  # colour bar: high at the top, low at the bottom
    assert tuple(bar[0]) == (253, 231, 36) and tuple(bar[-1]) == (68, 1, 84)


def test_scan_order_figure_saves_png(tmp_path):
    step_maps = [(s, (np.arange(s * s).reshape(s, s) % 4).astype(float)) for s in SIDES]
    figure = scan_order_figure(step_maps, np.arange(16).reshape(4, 4), 4)
    assert [ax.get_title() for ax in figure.axes[:4]] == ['1x1: step', '2x2: step', '4x4: step', '4x4: rank']
    path = tmp_path / 'scan_order.png'
    save_figure(figure, path)
    with Image.open(path) as png:
        assert png.format == 'PNG'


class FakeAutoencoder:
    """Code vectors of width 3, decoded by upsampling x8 into [-1, 1]."""

    def codes_to_latents(self, codes):
        return (codes.float()[:, None] / 10).repeat(1, 3, 1, 1)  # (1, 3, s, s)

    def rescale_latents(self, latents, side):
        return torch.nn.functional.interpolate(latents, size=(side, side), mode='bilinear')

    def decode(self, latents):
        return torch.nn.functional.interpolate(latents, scale_factor=8).tanh()  # (T, 3, 8s, 8s)


def test_save_gif_one_frame_per_step(tmp_path):
    steps = [torch.from_numpy(s) for s in fake_steps()]
    codes = [torch.randint(0, VOCAB, (s, s), generator=torch.Generator().manual_seed(s)) for s in SIDES]
    frames = formation_frames(*formation_stages(FakeAutoencoder(), codes, steps, 32))
    assert len(frames) == 7  # steps 0..6
    path = tmp_path / 'forming.gif'
    save_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.format == 'GIF' and gif.n_frames == 7


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'maps.png'
    path.write_bytes(b'previous')
    figure = fake_maps_figure()

    def broken_savefig(f, **kwargs):
        f.write(b'\x89PNG partial')
        raise RuntimeError('interrupted')

    monkeypatch.setattr(figure, 'savefig', broken_savefig)
    with pytest.raises(RuntimeError, match='interrupted'):
        save_figure(figure, path)
    assert path.read_bytes() == b'previous'
    assert [p.name for p in tmp_path.iterdir()] == ['maps.png']  # no temporary file left
