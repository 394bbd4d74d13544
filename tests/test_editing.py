"""Editing (models/editing.py, main_sample.py --edit_image): kept codes are exact at every scale, keeping all
returns the encoded pyramid, keeping nothing is ordinary sampling, the same edit whatever the batch, and bad
inputs are one clear line."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import main_sample
from models.autoencoder_config import AutoencoderConfig
from models.editing import cell_mask, edit, known_pyramid
from models.generator_config import GeneratorConfig
from models.load import build_generator
from models.sample_settings import SampleSettings
from test_autoencoder import randomize
from test_generator import random_generator, tiny_model_config
from util.images import to_uint8


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
    out = edit(model, images, keep, SampleSettings(cfg=1.5), labels=torch.tensor([1, 3]), seeds=[4, 5], decode='none')
    for got, want, mask in zip(out.codes, codes, masks):
        assert torch.equal(got[mask], want[mask])
    assert [int(m.sum()) for m in masks] == [0, 0, 2 * 4, 2 * 24]  # per scale, both images
    assert any(not torch.equal(got[~mask], want[~mask]) for got, want, mask in zip(out.codes, codes, masks))


def test_a_one_scale_model_keeps_its_known_codes(tmp_path):
    model = random_generator(tmp_path, seed=8, one_scale=True)  # the 8x8 grid alone
    images, keep = images_and_keep()
    codes, masks = known_pyramid(model, images, keep)
    out = edit(model, images, keep, SampleSettings(steps_per_scale=4), labels=torch.tensor([2, 0]), seeds=[1, 2],
               decode='none')
    assert len(out.codes) == 1 and int(masks[0].sum()) == 2 * 24
    assert torch.equal(out.codes[0][masks[0]], codes[0][masks[0]])


def test_keeping_everything_returns_the_encoded_pyramid(model):
    images, _ = images_and_keep()
    out = edit(model, images, torch.ones(2, 32, 32, dtype=torch.bool), SampleSettings(), labels=torch.tensor([0, 2]),
               seeds=[1, 2], decode='none')
    for got, want in zip(out.codes, model.codes_from_images(images)):
        assert torch.equal(got, want)


def test_keeping_nothing_is_ordinary_sampling(model):
    images, _ = images_and_keep()
    settings = SampleSettings(cfg=2.0, steps_per_scale=2)
    kwargs = dict(labels=torch.tensor([4, 1]), seeds=[8, 9], decode='none')
    edited = edit(model, images, torch.zeros(2, 32, 32, dtype=torch.bool), settings, **kwargs)
    plain = model.sample(settings, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(edited.codes, plain.codes))


def test_the_same_edit_whatever_the_batch(model):
    images, keep = images_and_keep(batch=3, seed=1)
    batch = edit(model, images, keep, SampleSettings(), labels=torch.tensor([0, 1, 2]), seeds=[5, 6, 7], decode='none')
    alone = edit(model, images[1:2], keep[1:2], SampleSettings(), labels=torch.tensor([1]), seeds=[6], decode='none')
    assert all(torch.equal(a[1], b[0]) for a, b in zip(batch.codes, alone.codes))


def test_one_image_edits_with_a_stride_2_autoencoder(tmp_path):
    """Each image is encoded alone; with a stride-2 autoencoder of width 32 (the ablation sweep's layout) the 1x1
    scale normalizes a 1x1 map with one channel per group."""
    model_cfg = tiny_model_config(tmp_path, img_size=8)  # sides 1, 2, 4
    ae_config = yaml.safe_load((tmp_path / 'ae.yaml').read_text())
    ae_config['model']['params']['ddconfig']['ch_mult'] = [1, 2]
    model = build_generator(GeneratorConfig.from_dict(model_cfg), AutoencoderConfig.from_published(ae_config, 'ae'),
                            load_autoencoder_checkpoint=False)
    randomize(model, 3)
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    keep = torch.ones(1, 8, 8, dtype=torch.bool)
    keep[:, :, 4:] = False
    codes, masks = known_pyramid(model.eval(), images, keep)
    out = edit(model, images, keep, SampleSettings(), labels=torch.tensor([1]), seeds=[4], decode='none')
    assert [int(m.sum()) for m in masks] == [0, 2, 8]
    for got, want, mask in zip(out.codes, codes, masks):
        assert torch.equal(got[mask], want[mask])


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


def centre_crop_32(array):
    """The ADM crop of a 40x30 array to 32x32, by hand: BICUBIC to 43x32 (40 * 32 / 30 = 42.7), columns 5..36."""
    return np.array(Image.fromarray(array).resize((43, 32), Image.BICUBIC))[:, 5:37]


def read_png(path):
    with Image.open(path) as image:
        return np.array(image)


def test_cli_edits_keep_the_requested_region(checkpoint, monkeypatch):
    """For a mask image, a box and out-painting: edit_mask.png is the requested mask, the sampler is given the
    cropped input and that mask, the edits keep in every fully kept cell of every scale the code of the blanked
    input (known_pyramid), edit_input.png is the input and edit_NNNN.png the decoded edits, and the three masks
    give three different edits. (Kept pixels are not compared: the decoder mixes kept and redrawn codes.)"""
    calls = []

    def spy(model, images, keep, *args, **kwargs):
        calls.append((model, images, keep, edit(model, images, keep, *args, **kwargs)))
        return calls[-1][-1]

    monkeypatch.setattr(main_sample, 'edit', spy)
    mask = np.zeros((30, 40, 3), np.uint8)
    mask[:, :20] = mask[22:] = 255  # keep the left half and the bottom rows
    Image.fromarray(mask).save(checkpoint / 'mask.png')
    crop = centre_crop_32(read_png(checkpoint / 'in.png'))
    box = np.ones((32, 32), bool)
    box[:, :16] = False  # '0,0,16,32' redraws the left half
    centre = np.zeros((32, 32), bool)
    centre[8:24, 8:24] = True  # --outpaint 0.5 keeps the input, shrunk to 16x16, at the centre
    canvas = np.zeros_like(crop)
    canvas[8:24, 8:24] = np.asarray(Image.fromarray(crop).resize((16, 16), Image.BICUBIC))
    cases = [(['--edit_mask', str(checkpoint / 'mask.png')], centre_crop_32(mask)[..., 0] > 127, crop),
             (['--edit_mask', '0,0,16,32'], box, crop), (['--outpaint', '0.5'], centre, canvas)]
    edits = []
    for how, keep, image in cases:
        run(checkpoint, '--edit_image', str(checkpoint / 'in.png'), *how, '--labels', '2', '2', '4')
        written = {name: read_png(checkpoint / 'out' / f'{name}.png')
                   for name in ('edit_mask', 'edit_input', 'edit_0000', 'edit_0001', 'edit_0002')}
        white = np.repeat(keep[..., None] * np.uint8(255), 3, 2)
        np.testing.assert_array_equal(written['edit_mask'], white, err_msg=f'{how}: edit_mask.png')
        assert np.abs(written['edit_input'].astype(int) - image).max() <= 1, how  # to_uint8 truncates
        model, images, given_keep, out = calls[-1]
        given_image = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(images, given_image.expand_as(images))
        np.testing.assert_array_equal(given_keep.numpy(), np.broadcast_to(keep, (3, 32, 32)),
                                      err_msg=f'{how}: the mask given to the sampler')
        known, _ = known_pyramid(model, images[:1], given_keep[:1])
        for side, got, want in zip(model.sides, out.codes, known):
            cell = 32 // side
            kept_cells = torch.from_numpy(keep.reshape(side, cell, side, cell).all((1, 3)))
            assert torch.equal(got[:, kept_cells], want[:, kept_cells].expand(3, -1)), (how, side)
        assert kept_cells.any(), how  # the top scale keeps cells
        with torch.no_grad():
            pixels = to_uint8(model.autoenc.decode(model.autoenc.codes_to_latents(out.codes[-1])))
        for i in range(3):
            np.testing.assert_array_equal(written[f'edit_{i:04d}'], pixels[i], err_msg=f'{how}: edit_{i:04d}.png')
        edits.append(pixels)
    assert not any(np.array_equal(edits[a], edits[b]) for a, b in ((0, 1), (0, 2), (1, 2)))


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
