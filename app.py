"""A browser app for a checkerboard generator (Gradio): pick a class and a schedule and watch the checkerboard fill
in, paint a mask and edit, see an image's likelihood per scale and per position.

    python app.py [--checkpoint PATH] [--port 7860] [--device cpu] [--host 127.0.0.1]

With no --checkpoint it opens the demo's (outputs/demo/checkpoint-last.pth, made by `python main.py --config
configs/demo.yaml`; when it is missing the page and the terminal say so). The model is loaded once (.pth with
weights_only=True, or .safetensors from tools/export_safetensors.py) and requests queue, one at a time. Generate
and Edit run main_sample.py's showcase and editing: the same class, seed and settings give the same images as
`python main_sample.py --checkpoint PATH --labels C C ... --seed SEED ...` (with --use_ema for EMA weights).
Bad input (not an image, an empty mask, a class or schedule the model cannot take) is a message in the page.
"""
import argparse
import functools
import os
import sys
import tempfile

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
from models.load import checkpoint_config, read_safetensors
from models.sample_settings import SampleSettings
from util.checkpoint import load_checkpoint
from util.config import ConfigError
from util.errors import UsageError
from util.figures import likelihood_figure, save_figure
from util.images import from_uint8, save_png, to_uint8
from util.run_dir import exit_on_error

DEMO_CHECKPOINT = 'outputs/demo/checkpoint-last.pth'
DEMO_COMMAND = 'python main.py --config configs/demo.yaml'
MAX_IMAGES = 16


def in_page(handler):
    """The project's usage errors of a request as a message in the page (gr.Error); the app keeps serving."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UsageError as e:
            raise gr.Error(str(e)) from None
    return wrapped


def dataset_root(checkpoint_path):
    """The training data folder named in a checkpoint's config, when it is on this machine (class names, val
    images), else None."""
    checkpoint = (read_safetensors(checkpoint_path) if checkpoint_path.endswith('.safetensors')
                  else load_checkpoint(checkpoint_path))
    args = checkpoint_config(checkpoint, checkpoint_path).get('args') or {}
    path = args.get('data_path')
    if path in BUILTIN_DATASETS:
        path = os.path.join(args.get('builtin_root') or 'data/builtin', path)
    return path if path and os.path.isdir(os.path.join(path, 'train')) else None


class Session:
    """The loaded model and what the page needs around it; its methods serve the page's requests."""

    def __init__(self, model, data_root, workdir):
        self.model, self.data_root, self.workdir = model, data_root, workdir
        self.classes = (scan_image_folder(data_root, 'train')[0] if data_root else
                        [str(i) for i in range(model.num_classes)])
        self.val = scan_image_folder(data_root, 'val')[1] if data_root and os.path.isdir(
            os.path.join(data_root, 'val')) else []

    def folder(self):
        return tempfile.mkdtemp(dir=self.workdir)

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
        """SampleSettings from the page's fields, checked against the model; ConfigError naming a bad one."""
        try:
            steps = parse_schedule(schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        settings = SampleSettings(cfg=float(cfg), cfg_start_step=int(cfg_start_step), steps_per_scale=steps,
                                  temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
        settings.check(self.model.sides, self.model.seq_positions.device)
        return settings

    @staticmethod
    def count(num_images):
        if not 1 <= int(num_images) <= MAX_IMAGES:
            raise ConfigError(f'number of images must be in 1..{MAX_IMAGES}, got {num_images}')
        return int(num_images)

    @in_page
    def generate(self, label, schedule, cfg, cfg_start_step, temperature, top_k, top_p, seed, num_images, shown,
                 progress=gr.Progress()):
        """Sample as main_sample.py's showcase: (grid, formation GIF of sample 0, maps of sample `shown`, text)."""
        n = self.count(num_images)
        settings = self.settings(schedule, cfg, cfg_start_step, temperature, top_k, top_p)
        if not 0 <= int(shown) < n:
            raise ConfigError(f'the sample whose maps are shown must be in 0..{n - 1}, got {shown}')
        sides = self.model.sides
        folder = self.folder()
        seconds, out = main_sample.showcase(
            self.model, settings, self.label(label, n), n, int(seed), folder,
            on_scale=lambda i: progress((i + 1) / len(sides), desc=f'scale {sides[i]}x{sides[i]} drawn'))
        info = (f'{n} image(s), {out.num_steps} serial steps ({settings.describe()}), '
                f'{1000 * seconds / n:.1f} ms per image on {self.model.seq_positions.device}')
        return (os.path.join(folder, 'samples_grid.png'), os.path.join(folder, 'sample_0000_forming.gif'),
                os.path.join(folder, f'sample_{int(shown):04d}_maps.png'), info)

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
        folder = self.folder()
        main_sample.write_edits(self.model, settings, image, keep, self.label(label, n), n, int(seed), folder)
        return os.path.join(folder, 'edit_grid.png'), f'{n} edit(s), {settings.describe()}: input, kept region, edits'

    @in_page
    def likelihood(self, image_path, label, schedule):
        """The image's negative log-likelihood under the schedule's factorization: (a figure of the image, its
        reconstruction and the bits of every position, a table of bits per scale)."""
        settings = self.settings(schedule)
        if not image_path:
            raise ConfigError('no image: upload one or load one from the val split')
        original = main_sample.read_rgb(image_path, 'the image')
        device = self.model.seq_positions.device
        pixels = np.array(center_crop_arr(original, self.model.img_size))  # (S, S, 3) uint8, writable
        codes = self.model.codes_from_images(from_uint8(pixels)[None].to(device))
        logp = code_log_probs(self.model, codes, self.label(label, 1), settings)
        maps = [-bits(grid[0]).cpu().numpy() for grid in logp]  # [(s, s)] bits per position
        with torch.no_grad():
            reconstruction = to_uint8(self.model.autoenc.decode(self.model.autoenc.codes_to_latents(codes[-1])))[0]
        total = sum(float(m.sum()) for m in maps)
        title = f'{total:.1f} bits under schedule {format_schedule(settings.steps_per_scale)}'
        folder = self.folder()
        save_figure(likelihood_figure(pixels, reconstruction, maps, title), os.path.join(folder, 'likelihood.png'))
        save_png(reconstruction, os.path.join(folder, 'reconstruction.png'))
        rows = '\n'.join(f'| {s}x{s} | {float(m.sum()):.1f} |' for s, m in zip(self.model.sides, maps))
        table = f'| scale | bits |\n| --- | --- |\n{rows}\n| all | {total:.1f} |'
        return os.path.join(folder, 'likelihood.png'), table


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
    with gr.Blocks(title='Progressive-checkerboard generator') as page:
        gr.Markdown(f'### Progressive-checkerboard generator\n`{checkpoint_path}`: scales {model.sides}, '
                    f'{model.num_positions} codes per {model.img_size}-px image, '
                    f'{model.num_classes or "no"} classes')
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
    return p.parse_args(argv)


def load_session(path, device=None, use_ema='auto'):
    """The Session of a checkpoint; ConfigError (one line) when there is none."""
    if not os.path.isfile(path):
        raise ConfigError(f'--checkpoint {path}: no such file')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = load_generator(path, {'auto': None, 'yes': True, 'no': False}[use_ema], device)
    return Session(model, dataset_root(path), tempfile.mkdtemp(prefix='checkerboard-app-'))


def page_for(args):
    """The page of the checkpoint; without --checkpoint and without the demo's, a page saying how to make it."""
    if args.checkpoint is None and not os.path.isfile(DEMO_CHECKPOINT):
        message = (f'no checkpoint at {DEMO_CHECKPOINT}: make the demo\'s with `{DEMO_COMMAND}`, or pass '
                   '--checkpoint PATH')
        print(f'error: {message}', file=sys.stderr)
        return missing_page(message)
    path = args.checkpoint or DEMO_CHECKPOINT
    return build_page(load_session(path, args.device, args.use_ema), path)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_error():
        page = page_for(args)
    page.queue(default_concurrency_limit=1, max_size=32).launch(server_name=args.host, server_port=args.port,
                                                                 show_error=True)


if __name__ == '__main__':
    main()
