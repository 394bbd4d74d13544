"""Image dataset for a folder in ImageNet layout, with TenCrop views and unreadable-image handling.

Unreadable images are found in two places:
- up front, by opening every file's header with PIL (cheap: no pixel decoding; catches empty, non-image and
  header-truncated files; ~65 us a file with a warm file cache, so ImageNet's 1.28M take about 1.5 minutes;
  chunks go to a thread pool, which hides latency on cold or network file systems);
- lazily, when decoding pixels fails (data truncated after a valid header): the item is replaced by the next
  readable image and the file is recorded.
Both are logged and listed in `bad_list_path` (started afresh when the dataset is built; give it on one rank
only); more than `max_bad_fraction` of all files bad is an error. The lazy count is per process, so with
DataLoader workers each worker enforces the fraction on its own.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import find_classes, make_dataset

from data.transforms import TenCropView, center_crop_arr, view_index
from util.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = ('.jpeg', '.jpg', '.png')  # torchvision matches them case-insensitively
LAYOUT = '<root>/<split>/<class name>/*.{JPEG,jpg,jpeg,png}'
PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImagesError(DataError):
    """Too many unreadable images in a dataset folder."""


def scan_image_folder(root, split='train'):
    """(classes sorted by name, [(path, label)]) for root/split; a DataError naming the layout if unusable."""
    folder = os.path.join(root, split)
    for path in (root, folder):
        if not os.path.isdir(path):
            raise DataError(f'data folder not found: {path} (expected the layout {LAYOUT})')
    try:
        classes, class_to_idx = find_classes(folder)
        samples = make_dataset(folder, class_to_idx, extensions=EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f'no usable images in {folder}: {e} (expected the layout {LAYOUT})') from None
    return classes, samples


def _headers_readable(paths):
    readable = []
    for path in paths:
        try:
            with Image.open(path) as image:
                readable.append(image.width > 0 and image.height > 0)
        except PIL_ERRORS:
            readable.append(False)
    return readable


def find_unreadable_images(paths, chunk=256):
    """The paths whose image header PIL cannot parse (chunks checked in a thread pool; order kept)."""
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor() as pool:
        readable = [ok for part in pool.map(_headers_readable, chunks) for ok in part]
    return [path for path, ok in zip(paths, readable) if not ok]


class ImageFolderDataset(torch.utils.data.Dataset):
    """root/split/<class>/* images; item = (image, label, index).

    image: (3, size, size) in [-1, 1], the TenCrop view `view_index(seed, epoch, index)`,
    or (10, 3, size, size) with all views in TenCrop order if `all_views`.
    Call set_epoch(epoch) before each epoch (workers must not be persistent, so they see it).
    """

    def __init__(self, root, size, split='train', seed=0, all_views=False, bad_list_path=None,
                 max_bad_fraction=0.01):
        self.folder = os.path.join(root, split)
        self.classes, samples = scan_image_folder(root, split)
        self.num_files = len(samples)
        self.bad_list_path = bad_list_path
        self.max_bad_fraction = max_bad_fraction
        self.bad_paths = {}  # path -> None, in the order found
        if bad_list_path and os.path.exists(bad_list_path):
            os.remove(bad_list_path)
        self._record_bad(find_unreadable_images([path for path, _ in samples]))
        self.samples = [(path, label) for path, label in samples if path not in self.bad_paths]
        self.targets = [label for _, label in self.samples]
        self.transform = TenCropView(size)
        self.seed = seed
        self.epoch = 0
        self.all_views = all_views

    def _record_bad(self, paths):
        """Log and list unreadable files; raise once more than max_bad_fraction of all files are bad."""
        paths = [path for path in paths if path not in self.bad_paths]
        if not paths:
            return
        self.bad_paths.update(dict.fromkeys(paths))
        num_bad = len(self.bad_paths)
        log.warning('%d unreadable image(s) skipped under %s (total so far %d), e.g. %s',
                    len(paths), self.folder, num_bad, paths[0])
        if self.bad_list_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.bad_list_path)), exist_ok=True)
            with open(self.bad_list_path, 'a') as f:
                f.writelines(path + '\n' for path in paths)
        if num_bad > self.max_bad_fraction * self.num_files:
            where = f'; list in {self.bad_list_path}' if self.bad_list_path else ''
            raise BadImagesError(
                f'{num_bad} of {self.num_files} images under {self.folder} are unreadable '
                f'(more than {self.max_bad_fraction:.0%}); first: {next(iter(self.bad_paths))}{where}')

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def _load(self, index):
        """(RGB PIL image, label) of `index`, or of the next readable image if its pixels do not decode."""
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in self.bad_paths:
                continue
            try:
                with Image.open(path) as image:
                    return image.convert('RGB'), label
            except PIL_ERRORS:
                self._record_bad([path])
        raise BadImagesError(f'no readable image left under {self.folder}')

    def __getitem__(self, index):
        image, label = self._load(index)
        if self.all_views:
            return self.transform.all_views(image), label, index  # (10, 3, size, size)
        return self.transform(image, view=view_index(self.seed, self.epoch, index)), label, index


def _read_image(path, image_size, view=None):
    """uint8 (S, S, 3): the ADM center crop, or TenCrop view `view` of the training augmentation."""
    with Image.open(path) as image:
        if view is None:
            return np.asarray(center_crop_arr(image.convert('RGB'), image_size))
        return np.asarray(TenCropView(image_size).ten_crops(image)[view])


def load_real_images(root, split, image_size, max_images=None, seed=0, log=print, views=False):
    """(uint8 array (N, S, S, 3), labels (N,), classes) of root/split, ADM center-cropped; unreadable files skipped.

    max_images: read only a random subset of this many files (seeded), in random order.
    views: instead of the center crop, one of the views that training draws from (TenCrop of the ADM 1.1x crop),
    image i's view_index(seed, 0, i).
    """
    classes, samples = scan_image_folder(root, split)
    if max_images is not None:
        subset = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:max_images]
        samples = [samples[i] for i in subset.tolist()]
    bad = set(find_unreadable_images([path for path, _ in samples]))
    if bad:
        log(f'skipping {len(bad)} unreadable image(s) under {root}/{split}, e.g. {next(iter(bad))}')
    samples = [(path, label) for path, label in samples if path not in bad]
    paths = [path for path, _ in samples]
    chosen = [view_index(seed, 0, i) if views else None for i in range(len(paths))]
    with ThreadPoolExecutor() as pool:  # PIL decodes without the GIL
        images = list(pool.map(lambda path, view: _read_image(path, image_size, view), paths, chosen))
    return np.stack(images), np.array([label for _, label in samples], dtype=np.int64), classes
