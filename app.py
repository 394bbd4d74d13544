"""A browser app for a checkerboard generator (Gradio): pick a class and a schedule and watch the checkerboard fill
in, paint a mask and edit, see an image's likelihood per scale and per position.

    python app.py [--checkpoint PATH] [--port 7860] [--device cpu] [--host 127.0.0.1] [--precision fp32]
                  [--max_batch_images 256] [--max_queue 64]

With no --checkpoint it opens the demo's (outputs/demo/checkpoint-last.pth, made by `python main.py --config
configs/demo.yaml`; when it is missing the page and the terminal say so). The model is loaded once (.pth with
weights_only=True, or .safetensors from tools/export_safetensors.py). Concurrent Generate requests with the same
settings are drawn as one sampler batch (each sample has its own seed, so a request's images are those it gets
alone), Likelihood requests with the same schedule are scored as one, edits run one at a time. Generate and Edit
run main_sample.py's sampling and editing: the same class, seed and settings give the same images as
`python main_sample.py --checkpoint PATH --labels C C ... --seed SEED ...` (with --use_ema for EMA weights).
A request renders only what the page shows and hands Gradio its images as files in a bounded folder. Every torch
operation of a request runs in the model's thread, the main one, where the model was loaded (the request's own
thread draws with numpy and PIL): torch's OpenMP threads then serve one thread only, which sampling on a CPU
needs to run at full speed (util/request_batcher.py). Bad input
(not an image, an empty mask, a class or schedule the model cannot take) is a message in the page, as is a full
queue.
"""
import argparse
import atexit
import collections
import contextlib
import functools
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
from PIL import Image

import main_sample
from data.builtin import BUILTIN_DATASETS
from data.image_folder import scan_image_folder
from data.transforms import center_crop_arr
from models import load_generator
from models.checkerboard import format_schedule, parse_schedule
from models.likelihood import bits, code_log_probs
from models.load import checkpoint_config, read_checkpoint
from models.sample_batches import MAX_BASE_SEED, sample_seeds
from models.sample_settings import SampleSettings
from models.sampler import SampleOutput, decode_scales
from util.config import ConfigError
from util.errors import UsageError
from util.figures import figure_array, formation_frames, likelihood_figure, maps_image, write_gif
from util.images import from_uint8, to_uint8
from util.precision import PRECISIONS, precision_flag
from util.request_batcher import RequestBatcher
from util.run_dir import exit_on_error

DEMO_CHECKPOINT = 'outputs/demo/checkpoint-last.pth'
DEMO_COMMAND = 'python main.py --config configs/demo.yaml'
MAX_IMAGES = 16
CACHE_SECONDS = 1800  # Gradio's copies of the outputs are deleted after this long


def in_page(handler):
    """The project's usage errors of a request as a message in the page (gr.Error); the app keeps serving."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UsageError as e:
            raise gr.Error(str(e)) from None
    return wrapped


def dataset_root(checkpoint, checkpoint_path):
    """The training data folder named in a checkpoint's config, when it is on this machine (class names, val
    images), else None."""
    args = checkpoint_config(checkpoint, checkpoint_path).get('args') or {}
    path = args.get('data_path')
    if path in BUILTIN_DATASETS:
        path = os.path.join(args.get('builtin_root') or 'data/builtin', path)
    return path if path and os.path.isdir(os.path.join(path, 'train')) else None


@dataclass(frozen=True)
class BatchInfo:
    """What a request learns of the batch it ran in: its number, requests and images in all, and the seconds the
    model took for all of it (sampling and decoding)."""
    number: int
    requests: int
    images: int
    seconds: float

    def describe(self, device):
        return (f'sampled and decoded in {self.seconds:.3f} s ({1000 * self.seconds / self.images:.1f} ms per image) '
                f'in batch {self.number} with {self.requests - 1} other request(s), {self.images} images in all, '
                f'on {device}')


class RecentFiles:
    """The folder of the page's output images: it keeps the newest `keep` files and deletes older ones as new ones
    come (Gradio has copied them to its cache by then), so that the disk use stays bounded however many requests
    the app serves. Gradio copies a file into its cache atomically, while an image array it encodes itself is
    rewritten in place under the name of its hash, which cuts short a client still downloading the same image for
    an identical concurrent request."""

    def __init__(self, folder, keep):
        self.folder, self.keep = folder, keep
        self.paths, self.count, self.lock = collections.deque(), itertools.count(), threading.Lock()

    def new(self, suffix):
        """A fresh path in the folder; the oldest beyond `keep` are deleted."""
        with self.lock:
            path = os.path.join(self.folder, f'{next(self.count):08d}{suffix}')
            self.paths.append(path)
            while len(self.paths) > self.keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.paths.popleft())
        return path

    def png(self, image):
        """The path of image (H, W, 3) uint8 written as a new PNG."""
        path = self.new('.png')
        Image.fromarray(image).save(path)
        return path


class Session:
    """The loaded model and what the page needs around it; its methods serve the page's requests. All model work
    goes through one RequestBatcher: concurrent Generate requests with the same settings are sampled as one
    batch (at most max_batch_images), Likelihood requests with the same schedule are scored as one, edits run
    one at a time; each request then renders its own outputs in its own thread. The batcher's worker is a thread
    of its own, or with own_thread=False the caller of session.batcher.work()."""

    def __init__(self, model, data_root, workdir, precision='fp32', max_batch_images=256, max_waiting=64,
                 own_thread=True):
        self.model, self.data_root, self.precision = model, data_root, precision
        self.classes = (scan_image_folder(data_root, 'train')[0] if data_root else
                        [str(i) for i in range(model.num_classes)])
        self.val = scan_image_folder(data_root, 'val')[1] if data_root and os.path.isdir(
            os.path.join(data_root, 'val')) else []
        # the running requests of the three tabs (at most max_waiting each) write at most 5 x max_waiting files
        # before Gradio copies theirs
        self.files = RecentFiles(workdir, keep=8 * max_waiting)
        self.batch_numbers = itertools.count()
        self.batcher = RequestBatcher(self.run_batch, max_batch_images, max_waiting, own_thread)

    @property
    def device(self):
        return self.model.seq_positions.device

    def label(self, choice, count):
        """(count,) labels of a class choice (its name or index), None for an unconditional model."""
        if not self.model.class_cond:
            return None
        index = self.classes.index(choice) if choice in self.classes else choice
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise ConfigError(f'class {choice!r}: not one of this model\'s classes') from None
        if not 0 <= index < self.model.num_classes:
            raise ConfigError(f'class {index} out of range: this model has classes 0..{self.model.num_classes - 1}')
        return torch.full((count,), index)

    def settings(self, schedule, cfg=0.0, cfg_start_step=0, temperature=1.0, top_k=0, top_p=1.0):
        """SampleSettings from the page's fields in the app's precision, checked against the model; ConfigError
        naming a bad one."""
        try:
            steps = parse_schedule(schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        settings = SampleSettings(cfg=float(cfg), cfg_start_step=int(cfg_start_step), steps_per_scale=steps,
                                  temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                  precision=self.precision)
        settings.check(self.model.sides, self.device)
        return settings

    @staticmethod
    def count(num_images):
        if not 1 <= int(num_images) <= MAX_IMAGES:
            raise ConfigError(f'number of images must be in 1..{MAX_IMAGES}, got {num_images}')
        return int(num_images)

    def run_batch(self, key, items, progress):
        """The batcher's work: one result per item of a batch of one key ((kind, settings or a request's own
        object)), each with the BatchInfo."""
        kind, settings = key
        start = time.perf_counter()
        results = {'generate': self.sample_batch, 'likelihood': self.likelihood_batch,
                   'edit': lambda _, edits, __: [edits[0]()]}[kind](settings, items, progress)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        info = BatchInfo(next(self.batch_numbers), len(items), sum(len(seeds) for _, seeds in items)
                         if kind == 'generate' else len(items), time.perf_counter() - start)
        return [(result, info) for result in results]

    def sample_batch(self, settings, items, progress):
        """Items (labels (n,) or None, n seeds) sampled as one batch; each one's (SampleOutput with its top scale
        decoded, the formation stages of its sample 0, the grid of its samples, its samples (n, S, S, 3) uint8),
        decoded on its own as a solo request decodes it, so that its pixels do not depend on the batch (the
        decoder's rows do depend on the batch they are decoded in: docs/benchmarks.md, 2026-12-07, third
        session)."""
        labels = None if items[0][0] is None else torch.cat([labels for labels, _ in items])
        seeds = [seed for _, item_seeds in items for seed in item_seeds]
        out = self.model.sample(settings, labels=labels, batch_size=len(seeds), seeds=seeds, decode='none',
                                on_scale=progress)
        parts, first = [], 0
        for _, item_seeds in items:
            part = slice(first, first + len(item_seeds))
            own = SampleOutput(codes=[c[part] for c in out.codes], images=[],
                               maps={k: [m[part] for m in v] for k, v in out.maps.items()})
            images = decode_scales(self.model, own, 'top').images[-1]
            parts.append((own, main_sample.sample_stages(self.model, own), main_sample.samples_grid(images),
                          to_uint8(images)))
            first = part.stop
        return parts

    def likelihood_batch(self, settings, items, _):
        """Items (pixels (S, S, 3) uint8, labels (1,) or None) scored as one batch: each one's ([(s, s)] bits
        per position per scale, reconstruction (S, S, 3) uint8); each image is encoded and decoded on its own."""
        model = self.model
        with torch.no_grad():
            codes = [model.codes_from_images(from_uint8(pixels)[None].to(self.device)) for pixels, _ in items]
            labels = None if items[0][1] is None else torch.cat([labels for _, labels in items])
            logp = code_log_probs(model, [torch.cat(scale) for scale in zip(*codes)], labels, settings)
            reconstructions = [to_uint8(model.autoenc.decode(model.autoenc.codes_to_latents(c[-1])))[0] for c in codes]
        return [([-bits(grid[j]).cpu().numpy() for grid in logp], reconstruction)
                for j, reconstruction in enumerate(reconstructions)]

    @in_page
    def generate(self, label, schedule, cfg, cfg_start_step, temperature, top_k, top_p, seed, num_images, shown,
                 progress=gr.Progress()):
        """Sample as main_sample.py's showcase, in a batch with the concurrent requests of the same settings:
        (grid, formation GIF of sample 0, maps of sample `shown`, text)."""
        n = self.count(num_images)
        settings = self.settings(schedule, cfg, cfg_start_step, temperature, top_k, top_p)
        if not 0 <= int(shown) < n:
            raise ConfigError(f'the sample whose maps are shown must be in 0..{n - 1}, got {shown}')
        if not 0 <= int(seed) < MAX_BASE_SEED:
            raise ConfigError(f'seed must be in 0..{MAX_BASE_SEED - 1}, got {seed}')
        sides = self.model.sides
        (out, stages, grid, pixels), info = self.batcher.submit(
            ('generate', settings), (self.label(label, n), sample_seeds(int(seed), range(n))), size=n,
            on_progress=lambda i: progress((i + 1) / len(sides), desc=f'scale {sides[i]}x{sides[i]} drawn'))
        gif = self.files.new('.gif')  # the rest is numpy and PIL work (and indexing), in this request's thread
        with open(gif, 'wb') as f:
            write_gif(formation_frames(*stages), f)
        maps = main_sample.sample_maps(out, int(shown))
        text = (f'{n} image(s), {out.num_steps} serial steps ({settings.describe()}); '
                f'{info.describe(self.device)}')
        maps_png = self.files.png(maps_image(pixels[int(shown)], maps['step'], maps['prob'], maps['entropy'],
                                             self.model.vocab_size))
        return self.files.png(grid), gif, maps_png, text

    @in_page
    def val_image(self, index):
        """The path of val image `index` of the model's dataset, for the editor and the likelihood."""
        if not self.val:
            raise ConfigError('no val images: the checkpoint\'s dataset is not on this machine; upload an image')
        if not 0 <= int(index) < len(self.val):
            raise ConfigError(f'val image index must be in 0..{len(self.val) - 1}, got {index}')
        return self.val[int(index)][0]

    @in_page
    def edit(self, editor, outpaint, label, schedule, cfg, cfg_start_step, temperature, seed, num_images):
        """Edit as main_sample.py --edit_image: the painted region (or, with an out-painting factor, the border)
        is redrawn; returns (the grid of input, kept region and edits, text)."""
        n = self.count(num_images)
        settings = self.settings(schedule, cfg, cfg_start_step, temperature)
        if not editor or not editor.get('background'):
            raise ConfigError('no image: upload one or load one from the val split')
        original = main_sample.read_rgb(editor['background'], 'the image')
        size = self.model.img_size
        if outpaint:
            image, keep = main_sample.edit_arrays(original, size, outpaint=float(outpaint))
        else:
            painted = np.zeros((original.height, original.width), dtype=bool)
            for layer in editor.get('layers') or []:
                with Image.open(layer) as picture:
                    painted |= np.asarray(picture.convert('RGBA').resize(original.size))[..., 3] > 0
            if not painted.any():
                raise ConfigError('empty mask: paint the region to redraw, or choose an out-painting factor')
            mask = Image.fromarray(np.where(painted, 0, 255).astype(np.uint8))  # white = keep
            image, keep = main_sample.edit_arrays(original, size, mask=mask)
        labels = self.label(label, n)

        def draw():  # in the model's thread
            out = main_sample.draw_edits(self.model, settings, image, keep, labels, n, int(seed))
            return main_sample.edit_grid(image, keep, out.images[-1])
        grid, _ = self.batcher.submit(('edit', object()), draw, size=n)
        return self.files.png(grid), f'{n} edit(s), {settings.describe()}: input, kept region, edits'

    @in_page
    def likelihood(self, image_path, label, schedule):
        """The image's negative log-likelihood under the schedule's factorization, scored in a batch with the
        concurrent requests of the same schedule: (a figure of the image, its reconstruction and the bits of every
        position, a table of bits per scale)."""
        settings = self.settings(schedule)
        if not image_path:
            raise ConfigError('no image: upload one or load one from the val split')
        original = main_sample.read_rgb(image_path, 'the image')
        pixels = np.array(center_crop_arr(original, self.model.img_size))  # (S, S, 3) uint8, writable
        (maps, reconstruction), _ = self.batcher.submit(('likelihood', settings), (pixels, self.label(label, 1)))
        total = sum(float(m.sum()) for m in maps)
        title = f'{total:.1f} bits under schedule {format_schedule(settings.steps_per_scale)}'
        rows = '\n'.join(f'| {s}x{s} | {float(m.sum()):.1f} |' for s, m in zip(self.model.sides, maps))
        table = f'| scale | bits |\n| --- | --- |\n{rows}\n| all | {total:.1f} |'
        return self.files.png(figure_array(likelihood_figure(pixels, reconstruction, maps, title))), table


def sampling_fields(session, tab, guidance=True, extra=True):
    """The class and sampling settings fields of a tab, in the order the session's handlers take them; the class
    and schedule fields have the ids TAB-class and TAB-schedule."""
    fields = [gr.Dropdown(session.classes, value=session.classes[0], label='class', elem_id=f'{tab}-class',
                          visible=session.model.class_cond) if session.classes else gr.State(None),
              gr.Textbox('4', label="schedule: steps for every scale ('4') or one per scale ('1,4,4,6')",
                         elem_id=f'{tab}-schedule')]
    if guidance:
        fields += [gr.Number(2.0, label='guidance (cfg, 0: off)'),
                   gr.Number(1, precision=0, label='guidance from step'),
                   gr.Number(1.0, label='temperature (0: argmax)')]
    if extra:
        fields += [gr.Number(0, precision=0, label='top-k (0: all codes)'), gr.Number(1.0, label='top-p')]
    return fields


def build_page(session, checkpoint_path):
    """The page: Generate, Edit and Likelihood tabs, each an API endpoint of the same name."""
    model = session.model
    with gr.Blocks(title='Progressive-checkerboard generator', delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown(f'### Progressive-checkerboard generator\n`{checkpoint_path}`: scales {model.sides}, '
                    f'{model.num_positions} codes per {model.img_size}-px image, '
                    f'{model.num_classes or "no"} classes; the transformer runs in {session.precision} on '
                    f'{session.device}', elem_id='header')
        with gr.Tab('Generate'):
            with gr.Row():
                with gr.Column(scale=1):
                    fields = sampling_fields(session, 'generate')
                    seed = gr.Number(0, precision=0, label='seed (sample i: SEED * 1000003 + i)')
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label='images')
                    shown = gr.Number(0, precision=0, label='maps of sample')
                    go = gr.Button('Generate', variant='primary', elem_id='generate')
                with gr.Column(scale=2):
                    grid = gr.Image(label='samples', type='filepath', elem_id='grid')
                    info = gr.Markdown(elem_id='generate-info')
                    with gr.Row():
                        gif = gr.Image(label='formation of sample 0', type='filepath')
                        maps = gr.Image(label='maps: drawing step, log-probability, entropy', type='filepath')
            go.click(session.generate, [*fields, seed, count, shown], [grid, gif, maps, info], api_name='generate')
        with gr.Tab('Edit'):
            with gr.Row():
                with gr.Column(scale=1):
                    editor = gr.ImageEditor(type='filepath', label='image: paint the region to redraw',
                                            elem_id='editor', brush=gr.Brush(colors=['#ff0000'], color_mode='fixed'))
                    index = gr.Number(0, precision=0, label='val image')
                    load = gr.Button('Load val image')
                    outpaint = gr.Slider(0, 0.95, value=0, step=0.05, label='out-painting: image size (0: off)')
                    fields = sampling_fields(session, 'edit', extra=False)
                    seed = gr.Number(0, precision=0, label='seed')
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label='edits')
                    go = gr.Button('Edit', variant='primary', elem_id='edit')
                with gr.Column(scale=2):
                    edits = gr.Image(label='input, kept region, edits', type='filepath', elem_id='edits')
                    info = gr.Markdown()
            load.click(session.val_image, [index], [editor], api_name='val_image')
            go.click(session.edit, [editor, outpaint, *fields, seed, count], [edits, info], api_name='edit')
        with gr.Tab('Likelihood'):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type='filepath', label='image')
                    index = gr.Number(0, precision=0, label='val image')
                    load = gr.Button('Load val image')
                    fields = sampling_fields(session, 'likelihood', guidance=False, extra=False)
                    go = gr.Button('Likelihood', variant='primary', elem_id='likelihood')
                with gr.Column(scale=2):
                    figure = gr.Image(label='bits of every code', type='filepath')
                    table = gr.Markdown()
            load.click(session.val_image, [index], [image], api_name='val_image_likelihood')
            go.click(session.likelihood, [image, *fields], [figure, table], api_name='likelihood')
    return page


def missing_page(message):
    with gr.Blocks(title='Progressive-checkerboard generator') as page:
        gr.Markdown(f'### No model to serve\n{message}')
    return page


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', help=f'a generator checkpoint (.pth or .safetensors; default {DEMO_CHECKPOINT})')
    p.add_argument('--port', type=int, default=7860)
    p.add_argument('--host', default='127.0.0.1', help='0.0.0.0 serves other machines too')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--use_ema', choices=['auto', 'yes', 'no'], default='auto',
                   help='sample with the EMA weights (auto: where the checkpoint has them)')
    p.add_argument('--precision', choices=['auto', *PRECISIONS], default='fp32',
                   help='transformer precision (auto: bf16 where the CPU or GPU multiplies bf16 natively, else '
                        'fp32; fp32 gives exactly the images of main_sample.py at its default)')
    p.add_argument('--max_batch_images', type=main_sample.bounded(int, 1), default=256,
                   help='the most images sampled in one batch of concurrent requests')
    p.add_argument('--max_queue', type=main_sample.bounded(int, 1), default=64,
                   help='the most requests waiting for the model; beyond it a request is told the queue is full')
    return p.parse_args(argv)


def load_session(path, device=None, use_ema='auto', precision='fp32', max_batch_images=256, max_queue=64,
                 own_thread=True):
    """The Session of a checkpoint (precision 'auto' resolved on its device); ConfigError (one line) when there
    is none or the precision does not run on the device. own_thread: as for Session."""
    if not os.path.exists(path):
        raise ConfigError(f'--checkpoint {path}: no such file')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    precision = precision_flag(precision, device)
    checkpoint = read_checkpoint(path)  # read once, for the model and for its dataset
    model = load_generator(path, {'auto': None, 'yes': True, 'no': False}[use_ema], device, checkpoint=checkpoint)
    workdir = tempfile.mkdtemp(prefix='checkerboard-app-')
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    return Session(model, dataset_root(checkpoint, path), workdir, precision, max_batch_images, max_queue,
                   own_thread)


def page_for(args):
    """(page, Session) of the checkpoint, the session's batcher to be run by its caller (Session's own_thread=False);
    without --checkpoint and without the demo's, (a page saying how to make it, None)."""
    if args.checkpoint is None and not os.path.isfile(DEMO_CHECKPOINT):
        message = (f'no checkpoint at {DEMO_CHECKPOINT}: make the demo\'s with `{DEMO_COMMAND}`, or pass '
                   '--checkpoint PATH')
        print(f'error: {message}', file=sys.stderr)
        return missing_page(message), None
    path = args.checkpoint or DEMO_CHECKPOINT
    session = load_session(path, args.device, args.use_ema, args.precision, args.max_batch_images, args.max_queue,
                           own_thread=False)
    print(f'serving {path} on {session.device}, transformer in {session.precision}'
          + (' (--precision auto)' if args.precision == 'auto' else ''))
    return build_page(session, path), session


def launch(page, max_queue, host='127.0.0.1', port=7860, **kwargs):
    """Serve the page: up to max_queue requests of each tab wait for the model at once (the batcher merges them),
    as many more wait in Gradio's queue, and past that a request is told the queue is full. kwargs go to
    Blocks.launch."""
    page.queue(default_concurrency_limit=max_queue, max_size=max_queue).launch(
        server_name=host, server_port=port, show_error=True, max_threads=max(40, 3 * max_queue + 8), **kwargs)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_error():
        page, session = page_for(args)
    if session is None:
        return launch(page, args.max_queue, args.host, args.port)
    launch(page, args.max_queue, args.host, args.port, prevent_thread_lock=True)
    with contextlib.suppress(KeyboardInterrupt):
        session.batcher.work()  # the model's thread: this one, where the model was loaded
    page.close()


if __name__ == '__main__':
    main()
