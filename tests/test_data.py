"""Transforms, ImageFolder dataset and the built-in shapes dataset."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data.builtin as builtin
from data.builtin import BUILTIN_DATASETS, CLASSES, ensure_builtin_dataset, resolve_data_path
from data.image_folder import BadImagesError, ImageFolderDataset, load_real_images, scan_image_folder
from data.transforms import NUM_VIEWS, TenCropView, adm_crop_side, center_crop_arr, view_index
from util.images import from_uint8

SMALL = dict(train_per_class=3, val_per_class=2)


def random_image(rng, width=40, height=30):
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_folder(root, files_per_class, rng=None):
    """root/train/<class>/<file> random images; files_per_class: {class: [file names]}."""
    rng = rng or np.random.default_rng(0)
    for name, files in files_per_class.items():
        os.makedirs(root / 'train' / name, exist_ok=True)
        for file in files:
            fmt = 'PNG' if file.lower().endswith('.png') else 'JPEG'
            random_image(rng).save(root / 'train' / name / file, format=fmt)


# --- transforms ---

@pytest.mark.parametrize('size, side, resizes, corner', [
    ((400, 150), 35, [(Image.BOX, (200, 75)), (Image.BOX, (100, 37)), (Image.BICUBIC, (95, 35))], (30, 0)),
    ((97, 123), 32, [(Image.BOX, (48, 61)), (Image.BICUBIC, (32, 41))], (0, 4)),
    ((30, 53), 35, [(Image.BICUBIC, (35, 62))], (0, 13)),  # upscaled, no BOX step
    ((256, 256), 32, [(Image.BOX, (128, 128)), (Image.BOX, (64, 64)), (Image.BOX, (32, 32))], (0, 0)),
], ids=['400x150-35', '97x123-32', '30x53-35', '256-32'])
def test_center_crop_arr_box_then_bicubic_then_crop(size, side, resizes, corner):
    """Pixels equal the ADM steps worked out by hand for each size (BOX-halve while the short side >= 2*side,
    BICUBIC to short side = side, rounding the long side; the centre crop, floored), applied with PIL."""
    image = random_image(np.random.default_rng(2), *size)
    expected = image
    for resample, to in resizes:
        expected = expected.resize(to, resample=resample)
    left, top = corner
    expected = np.asarray(expected)[top:top + side, left:left + side]
    np.testing.assert_array_equal(np.asarray(center_crop_arr(image, side)), expected)


def test_adm_crop_side():
    assert adm_crop_side(256) == 281 and adm_crop_side(32) == 35


def test_view_range_shape_and_determinism():
    transform = TenCropView(16)
    image = random_image(np.random.default_rng(1))
    views = transform.all_views(image)
    assert views.shape == (NUM_VIEWS, 3, 16, 16) and views.dtype == torch.float32
    two_tone = np.zeros((30, 40, 3), np.uint8)
    two_tone[15:] = 255
    two_tone_views = transform.all_views(Image.fromarray(two_tone))
    assert two_tone_views.min() == -1 and two_tone_views.max() == 1
    for k in range(NUM_VIEWS):
        assert torch.equal(transform(image, view=k), views[k])
    assert torch.equal(views[5], views[1].flip(-1))  # top-left of the flipped image = mirrored top-right
    drawn = [transform(image, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1])
    with pytest.raises(ValueError):
        transform(image, view=NUM_VIEWS)


def test_view_index_is_deterministic_and_covers_all_views():
    picks = [view_index(0, 0, i) for i in range(200)]
    assert picks == [view_index(0, 0, i) for i in range(200)]
    assert set(picks) == set(range(NUM_VIEWS))
    assert picks != [view_index(0, 1, i) for i in range(200)]
    assert picks != [view_index(1, 0, i) for i in range(200)]


# --- ImageFolder ---

def test_image_folder_classes_labels_extensions(tmp_path):
    write_folder(tmp_path, {'b': ['x.JPEG', 'y.png'], 'a': ['z.jpg', 'w.PNG'], 'C': ['v.jpeg']})
    (tmp_path / 'train' / 'a' / 'notes.txt').write_text('not an image')
    dataset = ImageFolderDataset(tmp_path, size=16)
    assert dataset.classes == ['C', 'a', 'b']
    assert len(dataset) == 5 and dataset.targets == [0, 1, 1, 2, 2]
    image, label, index = dataset[3]
    assert image.shape == (3, 16, 16) and (label, index) == (2, 3)
    dataset.all_views = True
    assert dataset[0][0].shape == (NUM_VIEWS, 3, 16, 16)


@pytest.mark.parametrize('layout', ['no_root', 'no_train', 'no_images'])
def test_image_folder_layout_errors(tmp_path, layout):
    root = tmp_path / 'data'
    if layout != 'no_root':
        os.makedirs(root / ('train/a' if layout == 'no_images' else 'val'))
    with pytest.raises(ValueError, match='expected the layout') as error:
        ImageFolderDataset(root, size=16)
    assert str(root) in str(error.value)


def write_with_bad(root, num_good, num_bad):
    write_folder(root, {'a': [f'{i:03d}.png' for i in range(num_good)]})
    bad = [root / 'train' / 'a' / f'bad{i}.jpg' for i in range(num_bad)]
    for i, path in enumerate(bad):
        path.write_bytes(b'' if i % 2 else b'<html>not an image</html>')
    return sorted(str(path) for path in bad)


def test_image_folder_skips_unreadable_images(tmp_path, caplog):
    bad = write_with_bad(tmp_path, num_good=200, num_bad=2)
    bad_list = tmp_path / 'out' / 'bad_images.txt'
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, size=8, bad_list_path=bad_list)
    assert len(dataset) == 200
    assert sorted(bad_list.read_text().split()) == bad
    assert '2 unreadable image(s)' in caplog.text


def test_image_folder_too_many_unreadable_is_an_error(tmp_path):
    write_with_bad(tmp_path, num_good=200, num_bad=3)
    bad_list = tmp_path / 'bad_images.txt'
    with pytest.raises(BadImagesError, match=r'3 of 203 images .* \(more than 1%\)') as error:
        ImageFolderDataset(tmp_path, size=8, bad_list_path=bad_list)
    assert str(bad_list) in str(error.value) and 'bad0.jpg' in str(error.value)
    assert len(bad_list.read_text().split()) == 3


def test_image_folder_replaces_image_whose_pixels_do_not_decode(tmp_path):
    write_folder(tmp_path, {'a': [f'{i:03d}.jpg' for i in range(120)]})
    truncated = tmp_path / 'train' / 'a' / '005.jpg'
    truncated.write_bytes(truncated.read_bytes()[:-300])  # header intact, pixel data cut
    bad_list = tmp_path / 'bad_images.txt'
    dataset = ImageFolderDataset(tmp_path, size=8, all_views=True, bad_list_path=bad_list)
    assert len(dataset) == 120  # the header check passes it
    image, _, index = dataset[5]
    assert index == 5 and torch.equal(image, dataset[6][0])
    assert bad_list.read_text().split() == [str(truncated)]


# --- built-in shapes ---

def tree_bytes(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = open(path, 'rb').read()
    return files


def test_builtin_is_deterministic(tmp_path):
    first = tree_bytes(ensure_builtin_dataset(tmp_path / 'a', **SMALL))
    assert first == tree_bytes(ensure_builtin_dataset(tmp_path / 'b', **SMALL))
    assert first != tree_bytes(ensure_builtin_dataset(tmp_path / 'c', seed=1, **SMALL))
    assert len(first) == len(CLASSES) * 5 + 1  # images + manifest


def test_builtin_layout_classes_and_variation(tmp_path):
    root = ensure_builtin_dataset(tmp_path / 'shapes', size=32, train_per_class=6, val_per_class=2)
    assert len(CLASSES) >= 10
    assert os.path.realpath(os.path.join(root, 'eval_reference')) == os.path.realpath(os.path.join(root, 'val'))
    train = ImageFolderDataset(root, size=32)
    assert train.classes == CLASSES and len(train) == 6 * len(CLASSES)
    assert len(ImageFolderDataset(root, size=32, split='val')) == 2 * len(CLASSES)
    arrays = [np.asarray(Image.open(path)) for path, _ in train.samples]
    assert arrays[0].shape == (32, 32, 3)
    for label in range(len(CLASSES)):
        same_class = [a for a, y in zip(arrays, train.targets) if y == label]
        assert len({a.tobytes() for a in same_class}) == len(same_class)
        assert np.std([a.mean() for a in same_class]) > 5  # colours/backgrounds differ, not just noise


def test_builtin_rotation_background_and_radius_options(tmp_path):
    """rotation 0 draws every instance upright; background 'black' is black; the radius range bounds the size;
    bad values are refused."""
    for seed in range(5):
        upright = builtin.draw_shape_image('triangle', 32, np.random.default_rng(seed), rotation=0,
                                           background='black')
        assert not np.array_equal(upright, builtin.draw_shape_image('triangle', 32, np.random.default_rng(seed)))
        assert (upright[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()  # the shape never reaches the corners
        coverage = upright.astype(float).sum(-1)  # (32, 32): zero on the background
        rows = np.nonzero(coverage.sum(1))[0]
        centroid = (coverage.sum(1) * np.arange(32)).sum() / coverage.sum()
        assert centroid > (rows[0] + rows[-1]) / 2 + 1  # apex up: the mass sits low in the bounding box
    big, small = (builtin.draw_shape_image('circle', 32, np.random.default_rng(0), background='black',
                                           radius=(r, r)).astype(float).sum() for r in (0.4, 0.2))
    assert 3.6 < big / small < 4.4  # same colour, twice the radius: four times the area
    for bad, match in ((dict(background='plaid'), 'background'), (dict(rotation=400), 'rotation'),
                       (dict(radius=[0.3, 0.6]), 'radius')):
        with pytest.raises(ValueError, match=match):
            ensure_builtin_dataset(tmp_path / 'bad', **SMALL, **bad)


def test_builtin_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    draw = builtin.draw_shape_image
    calls = []

    def draw_then_interrupt(*args):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return draw(*args)

    monkeypatch.setattr(builtin, 'draw_shape_image', draw_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_dataset(tmp_path / 'shapes', **SMALL)
    assert os.listdir(tmp_path) == []  # neither the root nor the temporary tree
    monkeypatch.setattr(builtin, 'draw_shape_image', draw)
    root = ensure_builtin_dataset(tmp_path / 'shapes', **SMALL)
    assert tree_bytes(root) == tree_bytes(ensure_builtin_dataset(tmp_path / 'other', **SMALL))


def test_builtin_regenerate_is_noop_and_other_params_are_refused(tmp_path, monkeypatch):
    root = ensure_builtin_dataset(tmp_path / 'shapes', **SMALL)
    monkeypatch.setattr(builtin, 'draw_shape_image', None)  # would fail if anything were drawn again
    assert ensure_builtin_dataset(root, **SMALL) == root
    with pytest.raises(ValueError, match='other parameters.*train_per_class'):
        ensure_builtin_dataset(root, train_per_class=4, val_per_class=2)
    (tmp_path / 'stray').mkdir()
    (tmp_path / 'stray' / 'file').write_text('x')
    with pytest.raises(ValueError, match='not empty'):
        ensure_builtin_dataset(tmp_path / 'stray', **SMALL)


def test_resolve_data_path(tmp_path, monkeypatch):
    assert resolve_data_path(str(tmp_path), tmp_path / 'cache') == str(tmp_path)
    monkeypatch.setitem(BUILTIN_DATASETS, 'shapes32', dict(BUILTIN_DATASETS['shapes32'], **SMALL))
    root = resolve_data_path('shapes32', tmp_path / 'cache')
    assert root == os.path.join(tmp_path / 'cache', 'shapes32')
    assert os.path.exists(os.path.join(root, 'train', CLASSES[0], '00000.png'))
    with pytest.raises(ValueError, match='shapes32, shapes32-small, shapes64, shapes16-simple, shapes32-simple'):
        resolve_data_path('imagenet_typo', tmp_path / 'cache')


def test_real_images_in_training_views_are_what_training_sees(tmp_path):
    """load_real_images(views=True): image i in TenCrop view view_index(seed, 0, i), the pixels of the training
    transform for that view (up to float rounding), not the center crop."""
    root = str(tmp_path / 'shapes')
    ensure_builtin_dataset(root, 'shapes32', train_per_class=1, val_per_class=1)
    views, labels, _ = load_real_images(root, 'train', 32, seed=3, views=True, log=lambda message: None)
    crops, _, _ = load_real_images(root, 'train', 32, log=lambda message: None)
    _, samples = scan_image_folder(root, 'train')
    assert views.shape == crops.shape == (len(samples), 32, 32, 3) and views.dtype == np.uint8
    for i, (path, label) in enumerate(samples):
        with Image.open(path) as image:
            seen = TenCropView(32)(image, view=view_index(3, 0, i))  # (3, 32, 32)
        assert labels[i] == label
        torch.testing.assert_close(from_uint8(views[i]), seen, atol=1e-6, rtol=0)
    assert not np.array_equal(views, crops)
