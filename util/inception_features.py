"""Inception activations of an image batch, for the ADM evaluation suite.

An image batch is an ADM `.npz` (arr_0: uint8 N x H x W x 3) or a folder of image files, read in chunks.
Each backend maps a uint8 (B, H, W, 3) chunk to float32 activations:
  pool    (B, 2048)  pool_3, for FID and precision / recall
  spatial (B, 2023)  mixed_6/conv, first 7 channels (util.adm_metrics.spatial_vectors), for sFID
  logits  (B, 1008)  pool_3 @ softmax weights, without bias, for the Inception Score
Backends: 'tf' runs the TensorFlow graph that ADM and the published numbers use; 'torch' runs torch-fidelity's
port of the same network ('inception-v3-compat'), whose Mixed_6d.branch1x1 is the graph's mixed_6/conv.
"""
import os
import shutil
import urllib.error
import urllib.request
import zipfile

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from util.adm_metrics import spatial_vectors
from util.atomic import atomic_write
from util.errors import UsageError

INCEPTION_GRAPH_URL = ('https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/'
                       'classify_image_graph_def.pb')
INCEPTION_GRAPH_CACHE = os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                                     'checkerboardgen', 'classify_image_graph_def.pb')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
ARRAY_NAME = 'arr_0'


class InputError(UsageError):
    """An unusable input, with a one-line message: what is wrong, where, and how to fix it."""


class ImageBatch:
    """uint8 images (N, H, W, 3) from an ADM `.npz` (streamed from arr_0) or a folder of image files."""

    def __init__(self, path, role):
        self.path, self.role, self.shape = path, role, None
        if os.path.isdir(path):
            self.files = sorted(os.path.join(path, f) for f in os.listdir(path)
                                if f.lower().endswith(IMAGE_EXTENSIONS))
            if not self.files:
                raise InputError(f'{role} folder {path} holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
            self.shape = (len(self.files), *self._read_image(self.files[0]).shape)
        elif os.path.isfile(path):
            self.files = None
            self.shape = self._npz_header()
        else:
            raise InputError(f'{role} not found: {path} (give an ADM .npz with {ARRAY_NAME} or a folder of images)')

    def __len__(self):
        return self.shape[0]

    def _fail(self, problem):
        raise InputError(f'{self.role} {self.path}: {problem}')

    def _npz_header(self):
        """Shape of arr_0 from its .npy header, checked to be uint8 N x H x W x 3 (no pixels are read)."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = sorted(n[:-4] for n in archive.namelist() if n.endswith('.npy'))
                if ARRAY_NAME not in names:
                    self._fail(f'no array {ARRAY_NAME} (found {names}); save the images with '
                               f'np.savez(path, {ARRAY_NAME}=images)')
                with archive.open(ARRAY_NAME + '.npy') as f:
                    shape, fortran_order, dtype = _read_npy_header(f)
        except (zipfile.BadZipFile, ValueError) as e:
            self._fail(f'not a readable .npz archive ({e}); write it with np.savez(path, {ARRAY_NAME}=images)')
        if len(shape) != 4 or shape[3] != 3:
            self._fail(f'{ARRAY_NAME} has shape {shape}, expected N x H x W x 3 (RGB, channels last)')
        if dtype != np.uint8:
            self._fail(f'{ARRAY_NAME} has dtype {dtype}, expected uint8 pixels in [0, 255] '
                       f'(convert with (x * 255).round().clip(0, 255).astype(np.uint8) for images in [0, 1])')
        if fortran_order:
            self._fail(f'{ARRAY_NAME} is stored in Fortran order; save np.ascontiguousarray(images) instead')
        return shape

    def chunks(self, size):
        """Yield consecutive uint8 (<=size, H, W, 3) arrays covering the batch."""
        if self.files is None:
            yield from self._npz_chunks(size)
            return
        for start in range(0, len(self.files), size):
            yield np.stack([self._read_image(f) for f in self.files[start:start + size]])

    def _npz_chunks(self, size):
        image_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(ARRAY_NAME + '.npy') as f:
            _read_npy_header(f)
            for start in range(0, len(self), size):
                count = min(size, len(self) - start)
                data = f.read(count * image_bytes)
                if len(data) != count * image_bytes:
                    self._fail(f'{ARRAY_NAME} is truncated at image {start + len(data) // image_bytes}')
                yield np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape[1:])

    def _read_image(self, file):
        try:
            with Image.open(file) as img:
                pixels = np.asarray(img.convert('RGB'))  # (H, W, 3)
        except OSError as e:
            self._fail(f'cannot read {os.path.basename(file)} as an image ({e})')
        if self.shape is not None and pixels.shape != self.shape[1:]:
            self._fail(f'{os.path.basename(file)} is {pixels.shape[1]}x{pixels.shape[0]}, the first image is '
                       f'{self.shape[2]}x{self.shape[1]}; all images must have one size')
        return pixels


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of an open .npy stream, leaving it at the first data byte."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def compute_activations(batch, extractor, batch_size=64):
    """Run extractor over an ImageBatch; a dict of (N, D) float32 arrays ('pool', 'spatial', 'logits')."""
    parts = [extractor(images) for images in tqdm(batch.chunks(batch_size), desc=batch.role,
                                                   total=-(-len(batch) // batch_size))]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def download(url, path, flag):
    """Fetch url to path through a temporary file; offline, an InputError that names flag as the way out."""
    print(f'downloading {url} to {path}')
    try:
        with urllib.request.urlopen(url) as response, atomic_write(path) as f:
            shutil.copyfileobj(response, f)
    except OSError as e:  # URLError is an OSError
        raise InputError(f'could not download {url} ({getattr(e, "reason", e)}); on an offline machine fetch '
                         f'{os.path.basename(path)} elsewhere and copy it to {path} or pass {flag} PATH') from None


class TFInception:
    """ADM's TensorFlow Inception graph (classify_image_graph_def.pb), run in a tf.compat.v1 session."""

    def __init__(self, graph_path=None):
        try:
            import tensorflow.compat.v1 as tf
        except ImportError:
            raise InputError('TensorFlow is not installed: pip install -r requirements-eval.txt, '
                             'or use --backend torch') from None
        if graph_path is None:
            graph_path = INCEPTION_GRAPH_CACHE
            if not os.path.isfile(graph_path):
                download(INCEPTION_GRAPH_URL, graph_path, '--inception_graph')
        elif not os.path.isfile(graph_path):
            raise InputError(f'Inception graph not found: {graph_path}; download it with: '
                             f'wget {INCEPTION_GRAPH_URL} -O {graph_path}')
        graph_def = tf.GraphDef()
        with open(graph_path, 'rb') as f:
            graph_def.ParseFromString(f.read())
        graph = tf.Graph()
        with graph.as_default():
            self.images = tf.placeholder(tf.float32, shape=[None, None, None, 3])
            pool, spatial, matmul = tf.import_graph_def(
                graph_def, input_map={'ExpandDims:0': self.images}, name='inception',
                return_elements=['pool_3:0', 'mixed_6/conv:0', 'softmax/logits/MatMul'])
        config = tf.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        self.session = tf.Session(graph=graph, config=config)
        self.outputs = [pool, spatial]
        self.softmax_weights = self.session.run(matmul.inputs[1])  # (2048, 1008)

    def __call__(self, images):
        pool, spatial = self.session.run(self.outputs, {self.images: images.astype(np.float32)})
        pool = pool.reshape(len(images), -1)  # (B, 2048)
        return {'pool': pool, 'spatial': spatial_vectors(spatial), 'logits': pool @ self.softmax_weights}


class TorchInception:
    """torch-fidelity's FeatureExtractorInceptionV3 ('inception-v3-compat'); spatial maps from a forward hook
    on Mixed_6d.branch1x1, the module converted from the graph's mixed_6/conv."""

    def __init__(self, weights_path=None):
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
        if weights_path is not None and not os.path.isfile(weights_path):
            raise InputError(f'Inception weights not found: {weights_path}; download them with: '
                             f'wget {URL_INCEPTION_V3} -O {weights_path}')
        self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        try:
            self.net = FeatureExtractorInceptionV3('inception-v3-compat', ['2048', 'logits_unbiased'],
                                                   feature_extractor_weights_path=weights_path).to(self.device)
        except urllib.error.URLError as e:
            raise InputError(f'could not download {URL_INCEPTION_V3} ({e.reason}); on an offline machine fetch it '
                             f'elsewhere and pass --inception_weights PATH') from None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        self.spatial_NCHW = output  # (B, 192, 17, 17)

    @torch.no_grad()
    def __call__(self, images):
        x = torch.tensor(images).permute(0, 3, 1, 2).to(self.device)  # (B, 3, H, W) uint8
        pool, logits = self.net(x)  # (B, 2048), (B, 1008)
        spatial = self.spatial_NCHW.permute(0, 2, 3, 1).cpu().numpy()  # (B, 17, 17, 192)
        return {'pool': pool.cpu().numpy(), 'spatial': spatial_vectors(spatial), 'logits': logits.cpu().numpy()}


BACKENDS = {'tf': TFInception, 'torch': TorchInception}
