"""Built-in class-conditional dataset of procedurally drawn shapes, generated locally (no download).

Each image: one shape of its class with random centre, radius (a fraction of the image size in the range
`radius`), rotation (up to `rotation` degrees) and colour over a dark background (`background`: 'varied'
draws a random solid colour, linear gradient or light noise, 'black' is black); the shape is bright and
saturated, so it always stands out.
Masks are drawn with PIL at 4x and BOX-downsampled (anti-aliasing). Every image has its own RNG seeded by
(seed, split, class, image), so the output is a pure function of the parameters.

On disk (ImageFolder layout): root/train/<class>/NNNNN.png, root/val/<class>/NNNNN.png,
root/eval_reference -> val (relative symlink: the held-out images are the metric reference), and
root/manifest.json with the generation parameters. The tree is written into a temporary sibling folder
and renamed into place, so an interrupted run never leaves a tree with a manifest.
"""
import colorsys
import json
import math
import os
import shutil
import uuid

import numpy as np
from PIL import Image, ImageDraw

from util.errors import DataError

MANIFEST = 'manifest.json'
GENERATOR_VERSION = 2  # bump when the drawing code changes, so old trees are refused instead of mixed
SUPERSAMPLE = 4
SPLITS = ('train', 'val')

FULL_VARIATION = dict(seed=0, rotation=360, background='varied', radius=[0.25, 0.4])
BUILTIN_DATASETS = {
    'shapes32': dict(FULL_VARIATION, size=32, train_per_class=1000, val_per_class=100),
    'shapes32-small': dict(FULL_VARIATION, size=32, train_per_class=300, val_per_class=100),
    'shapes64': dict(FULL_VARIATION, size=64, train_per_class=1000, val_per_class=100),
    # the CPU demo (configs/demo.yaml): upright shapes of at least 0.3 x 16 px radius on black, for a 4x4 top token grid
    'shapes16-simple': dict(FULL_VARIATION, size=16, train_per_class=300, val_per_class=100, rotation=0,
                            background='black', radius=[0.3, 0.4]),
    # the same at 32 px, for a 16x16 top token grid under a stride-2 autoencoder (configs/sweeps/paper_regime.yaml)
    'shapes32-simple': dict(FULL_VARIATION, size=32, train_per_class=300, val_per_class=100, rotation=0,
                            background='black', radius=[0.3, 0.4]),
}
BACKGROUNDS = ('varied', 'black')


def _polygon(*points):
    return ('poly', points)


def _disk(x, y, radius, fill=255):
    return ('disk', (x, y), radius, fill)


def _regular(n, radius=1.0, turn=0.0):
    """Regular n-gon, a vertex straight up unless turned by `turn` radians."""
    angles = [2 * math.pi * k / n + turn for k in range(n)]
    return _polygon(*((radius * math.sin(a), -radius * math.cos(a)) for a in angles))


def _star(points=5, outer=1.0, inner=0.42):
    radii = [outer if k % 2 == 0 else inner for k in range(2 * points)]
    return _polygon(*((r * math.sin(math.pi * k / points), -r * math.cos(math.pi * k / points))
                      for k, r in enumerate(radii)))


def _bar(y, half_width=0.16, half_length=0.95):
    return _polygon((-half_length, y - half_width), (half_length, y - half_width),
                    (half_length, y + half_width), (-half_length, y + half_width))


# class name -> primitives in unit coordinates (shape within radius ~1); drawn in order, fill 0 cuts holes
SHAPES = {
    'arrow': [_polygon((-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2))],
    'circle': [_disk(0, 0, 1.0)],
    'crescent': [_disk(0, 0, 1.0), _disk(0.5, 0, 0.85, fill=0)],
    'cross': [_polygon((-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                       (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3))],
    'ring': [_disk(0, 0, 1.0), _disk(0, 0, 0.55, fill=0)],
    'square': [_regular(4, radius=1.0, turn=math.pi / 4)],  # sides level when upright
    'star': [_star()],
    'stripes': [_bar(-0.62), _bar(0), _bar(0.62)],
    'triangle': [_regular(3, radius=1.1)],
    'two_dots': [_disk(-0.55, 0, 0.42), _disk(0.55, 0, 0.42)],
}
CLASSES = sorted(SHAPES)


def _shape_mask(primitives, size, centre, radius, angle):
    """Float array (size, size) in [0, 1]: the shape's coverage, drawn at SUPERSAMPLE x and BOX-downsampled."""
    scale = SUPERSAMPLE
    mask = Image.new('L', (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask)
    cos, sin = math.cos(angle), math.sin(angle)

    def to_pixels(x, y):
        return (scale * (centre[0] + radius * (cos * x - sin * y)),
                scale * (centre[1] + radius * (sin * x + cos * y)))

    for primitive in primitives:
        if primitive[0] == 'poly':
            draw.polygon([to_pixels(x, y) for x, y in primitive[1]], fill=255)
        else:
            _, (x, y), r, fill = primitive
            cx, cy = to_pixels(x, y)
            rr = scale * radius * r
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
    mask = mask.resize((size, size), resample=Image.BOX)
    return np.asarray(mask, dtype=np.float32) / 255


def _colour(rng, value_range, saturation_range):
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation_range), rng.uniform(*value_range)),
                    dtype=np.float32)


def _background(rng, size, value_range, kind):
    """Float array (size, size, 3) in [0, 1], values in value_range.

    kind 'varied': solid, linear gradient or light noise at random; 'black': black.
    """
    if kind == 'black':
        return np.zeros((size, size, 3), dtype=np.float32)
    base = _colour(rng, value_range, (0.0, 0.7))
    variant = rng.integers(3)
    if variant == 0:
        return np.broadcast_to(base, (size, size, 3))
    if variant == 1:
        other = _colour(rng, value_range, (0.0, 0.7))
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
        t = math.cos(angle) * xs + math.sin(angle) * ys
        t = (t - t.min()) / (t.max() - t.min())
        return base + (other - base) * t[..., None]  # (size, size, 3)
    return np.clip(base + rng.normal(0, 0.04, (size, size, 3)), 0, 1)


def draw_shape_image(class_name, size, rng, rotation=360, background='varied', radius=(0.25, 0.4)):
    """uint8 array (size, size, 3): one random instance of a class, turned by up to `rotation` degrees, its
    radius a random fraction of size in the range `radius`."""
    radius = rng.uniform(*radius) * size
    centre = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(0, 2 * math.pi) * rotation / 360
    foreground = _colour(rng, (0.75, 1.0), (0.5, 1.0))
    background = _background(rng, size, (0.0, 0.35), background)
    alpha = _shape_mask(SHAPES[class_name], size, centre, radius, angle)[..., None]  # (size, size, 1)
    image = background * (1 - alpha) + foreground * alpha
    return np.round(image * 255).astype(np.uint8)


def builtin_params(name, **overrides):
    """Generation parameters of a built-in dataset: the registry entry updated with overrides."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f'unknown built-in dataset {name!r}; built-in names: {", ".join(BUILTIN_DATASETS)}')
    params = dict(BUILTIN_DATASETS[name])
    unknown = set(overrides) - set(params)
    if unknown:
        raise DataError(f'unknown built-in dataset parameter(s) {sorted(unknown)}; allowed: {sorted(params)}')
    params.update(overrides)
    if params['background'] not in BACKGROUNDS:
        raise DataError(f'built-in dataset background {params["background"]!r} is not one of {BACKGROUNDS}')
    low, high = params['radius']
    if not 0 < low <= high <= 0.5:
        raise DataError(f'built-in dataset radius range {params["radius"]!r} is not within (0, 0.5] of the size')
    if not 0 <= params['rotation'] <= 360:
        raise DataError(f'built-in dataset rotation {params["rotation"]!r} is not in [0, 360] degrees')
    return dict(name=name, **params, classes=CLASSES, generator_version=GENERATOR_VERSION)


def _write_tree(folder, params):
    for split_index, split in enumerate(SPLITS):
        for class_index, class_name in enumerate(params['classes']):
            class_folder = os.path.join(folder, split, class_name)
            os.makedirs(class_folder)
            for i in range(params[f'{split}_per_class']):
                rng = np.random.default_rng([params['seed'], split_index, class_index, i])
                image = draw_shape_image(class_name, params['size'], rng, params['rotation'], params['background'],
                                         params['radius'])
                Image.fromarray(image).save(os.path.join(class_folder, f'{i:05d}.png'))
    os.symlink('val', os.path.join(folder, 'eval_reference'))
    with open(os.path.join(folder, MANIFEST), 'w') as f:
        json.dump(params, f, indent=1)


def _check_manifest(root, params):
    with open(os.path.join(root, MANIFEST)) as f:
        found = json.load(f)
    if found != params:
        diff = {k: (found.get(k), params.get(k)) for k in sorted(set(found) | set(params))
                if found.get(k) != params.get(k)}
        raise DataError(f'{root} holds built-in dataset {found.get("name")!r} generated with other parameters '
                         f'(found, wanted): {diff}; delete it or use another folder')


def ensure_builtin_dataset(root, name='shapes32', **overrides):
    """Generate built-in dataset `name` into root unless already there; returns root.

    overrides: any of the registry entry's keys (size, train_per_class, val_per_class, seed, rotation,
    background, radius).
    Same parameters: no-op. Other parameters in root, or a non-empty root without manifest: DataError.
    Safe to call from several processes at once (each writes its own temporary tree; one rename wins).
    """
    root = os.fspath(root)
    params = builtin_params(name, **overrides)
    if os.path.exists(os.path.join(root, MANIFEST)):
        _check_manifest(root, params)
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise DataError(f'{root} is not empty and has no {MANIFEST}, so it is not a built-in dataset; '
                         f'delete it or use another folder')
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f'.{os.path.basename(root)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    os.mkdir(tmp)
    try:
        _write_tree(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, root)  # atomic; replaces an empty root, fails if another process got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(root, MANIFEST)):
            raise
        _check_manifest(root, params)
    return root


def resolve_data_path(data_path, cache_root):
    """A dataset folder for data_path: an existing folder as is, or a built-in name generated under cache_root."""
    if os.path.isdir(data_path):
        return data_path
    if data_path in BUILTIN_DATASETS:
        return ensure_builtin_dataset(os.path.join(cache_root, data_path), data_path)
    raise DataError(f'data_path {data_path!r} is neither an existing folder nor a built-in dataset '
                     f'(built-in names: {", ".join(BUILTIN_DATASETS)})')
