"""Editing (models/editing.py, main_sample.py --edit_image): kept codes are exact at every scale, keeping all
returns the encoded pyramid, keeping nothing is ordinary sampling, the same edit whatever the batch, and bad
inputs are one clear line."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import main_sample
from models.editing import cell_mask, edit, known_pyramid
from test_generator import random_generator, tiny_model_config


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return random_generator(tmp_path_factory.mktemp('edit'), seed=7)  # 32 px, sides 1, 2, 4, 8


def images_and_keep(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1
    keep = torch.ones(batch, 32, 32, dtype=torch.bool)
    keep[:, :, 12:] = False  # the right part is redrawn
    return images, keep


def test_cells_are_known_only_when_their_whole_region_is_kept():
    keep = torch.ones(1, 32, 32, dtype=torch.bool)
    keep[:, :, 12:] = False
    assert cell_mask(keep, 8)[0, 0].tolist() == [True, True, True, False, False, False, False, False]
    assert cell_mask(keep, 4)[0, 0].tolist() == [True, False, False, False]  # the second cell holds 8..15
    assert not cell_mask(keep, 1).any() and cell_mask(torch.ones(1, 32, 32, dtype=torch.bool), 1).all()


def test_kept_positions_equal_the_encoded_codes_at_every_scale(model):
    images, keep = images_and_keep()
    codes, masks = known_pyramid(model, images, keep)
    out = edit(model, images, keep, labels=torch.tensor([1, 3]), seeds=[4, 5], cfg=1.5, decode='none')
    for got, want, mask in zip(out.codes, codes, masks):
        assert torch.equal(got[mask], want[mask])
    assert [int(m.sum()) for m in masks] == [0, 0, 2 * 4, 2 * 24]  # per scale, both images
    assert any(not torch.equal(got[~mask], want[~mask]) for got, want, mask in zip(out.codes, codes, masks))


def test_keeping_everything_returns_the_encoded_pyramid(model):
    images, _ = images_and_keep()
    out = edit(model, images, torch.ones(2, 32, 32, dtype=torch.bool), labels=torch.tensor([0, 2]), seeds=[1, 2],
               decode='none')
    for got, want in zip(out.codes, model.codes_from_images(images)):
        assert torch.equal(got, want)


def test_keeping_nothing_is_ordinary_sampling(model):
    images, _ = images_and_keep()
    kwargs = dict(labels=torch.tensor([4, 1]), seeds=[8, 9], cfg=2.0, steps_per_scale=2, decode='none')
    edited = edit(model, images, torch.zeros(2, 32, 32, dtype=torch.bool), **kwargs)
    plain = model.sample(**kwargs)
    assert all(torch.equal(a, b) for a, b in zip(edited.codes, plain.codes))


def test_the_same_edit_whatever_the_batch(model):
    images, keep = images_and_keep(batch=3, seed=1)
    batch = edit(model, images, keep, labels=torch.tensor([0, 1, 2]), seeds=[5, 6, 7], decode='none')
    alone = edit(model, images[1:2], keep[1:2], labels=torch.tensor([1]), seeds=[6], decode='none')
    assert all(torch.equal(a[1], b[0]) for a, b in zip(batch.codes, alone.codes))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, model):
    """The module's model as a project checkpoint, and a 40x30 test image."""
    folder = tmp_path_factory.mktemp('edit_cli')
    model_cfg = tiny_model_config(folder)  # writes folder/ae.yaml, the autoencoder of the module's model
    ae_config = yaml.safe_load((folder / 'ae.yaml').read_text())
    torch.save({'model': model.state_dict(), 'config': {'model': model_cfg}, 'autoenc_config': ae_config},
               folder / 'checkpoint.pth')
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / 'in.png')
    return folder


def run(folder, *flags):
    main_sample.main(['--checkpoint', str(folder / 'checkpoint.pth'), '--output_dir', str(folder / 'out'), *flags])


def test_cli_writes_inputs_mask_and_edits(checkpoint, capsys):
    mask = np.full((30, 40, 3), 255, np.uint8)
    mask[:, 20:] = 0
    Image.fromarray(mask).save(checkpoint / 'mask.png')
    for how in (['--edit_mask', str(checkpoint / 'mask.png')], ['--edit_mask', '0,0,16,32'], ['--outpaint', '0.5']):
        run(checkpoint, '--edit_image', str(checkpoint / 'in.png'), *how, '--labels', '2', '2', '4')
        for name in ('edit_input.png', 'edit_mask.png', 'edit_0000.png', 'edit_0002.png', 'edit_grid.png'):
            with Image.open(checkpoint / 'out' / name) as image:
                assert image.size[0] >= 32
    with Image.open(checkpoint / 'out' / 'edit_mask.png') as image:  # out-painting keeps the centred 16x16
        kept = np.asarray(image)[..., 0] > 0
    assert kept.sum() == 16 * 16 and kept[8:24, 8:24].all()


@pytest.mark.parametrize('flags, message', [
    (['--edit_image', 'missing.png', '--edit_mask', '0,0,4,4'], '--edit_image not found: missing.png'),
    (['--edit_image', '{d}/checkpoint.pth', '--edit_mask', '0,0,4,4'], 'not a readable image'),
    (['--edit_image', '{d}/in.png', '--edit_mask', '0,0,40,4'], 'must lie inside the 32x32 image'),
    (['--edit_image', '{d}/in.png', '--edit_mask', 'left-half'], "neither an image file nor a box"),
    (['--edit_image', '{d}/in.png', '--edit_mask', '{d}/small.png'], 'is 8x8 but --edit_image is 40x30'),
    (['--edit_image', '{d}/in.png'], '--edit_image goes with one of --edit_mask and --outpaint'),
    (['--edit_image', '{d}/in.png', '--outpaint', '1.5'], 'must be in (0, 1]'),
])
def test_bad_edit_inputs_are_one_line(checkpoint, capsys, flags, message):
    Image.new('L', (8, 8), 255).save(checkpoint / 'small.png')
    with pytest.raises(SystemExit) as e:
        run(checkpoint, *(f.format(d=checkpoint) for f in flags))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err
