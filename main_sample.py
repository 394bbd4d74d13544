"""Sample images from a checkerboard generator checkpoint (published, or this project's).

    python main_sample.py --checkpoint pretrained_models/checkerboard-L-2x/checkpoint-last.pth --labels 207 360
        writes to --output_dir: samples_grid.png, sample_NNNN.png, sample_NNNN_maps.png,
        sample_0000_forming.gif and codes.npz (codes_<side> per scale, labels, seeds)
    torchrun --nproc_per_node 8 main_sample.py --checkpoint ... --num_samples 50000 --output_npz samples.npz
        an ADM-layout batch for evaluator.py; resumes from OUTPUT_NPZ.shards/ when interrupted
    python main_sample.py --checkpoint ... --flops
    python main_sample.py --checkpoint ... --edit_image IMG --edit_mask MASK --labels 3 3 5
        editing: keeps what MASK keeps (white, or all but a box 'x0,y0,x1,y1'; --outpaint F instead places the
        image in a larger canvas) and draws the rest, one edit per label; edit_grid.png shows them side by side

Sample i is drawn with seed SEED * 1_000_003 + i (and, for --num_samples, label i * num_classes // N), so an
image does not depend on the batch size or the number of processes.
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from data.transforms import center_crop_arr
from models import load_generator
from models.editing import edit
from models.checkerboard import format_schedule, parse_schedule, serial_steps
from models.sample_batches import MAX_BASE_SEED, balanced_labels, draw_samples, sample_seeds
from models.sample_settings import SampleSettings
from util.atomic import atomic_write
from util.checkpoint import UNSAFE_FLAG
from util.config import ConfigError
from util.distributed import DistInfo, all_gather_objects, barrier, cleanup, init_distributed
from util.figures import formation_frames, formation_stages, maps_figure, save_figure, save_gif
from util.images import from_uint8, grid_array, save_png, to_uint8
from util.precision import PRECISIONS, precision_flag
from util.run_dir import exit_on_error


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message):
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)


def bounded(cast, lo, hi=math.inf, lo_open=False):
    """argparse type: cast(text), finite, in [lo, hi] (or (lo, hi] with lo_open)."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
        if not (math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi):
            limits = f'{"(" if lo_open else "["}{lo}, {hi}]' if hi < math.inf else f'{">" if lo_open else ">="} {lo}'
            raise argparse.ArgumentTypeError(f'must be {"in " if hi < math.inf else ""}{limits}, got {text}')
        return value
    return parse


def schedule(text):
    """argparse type: a sampling schedule (models.checkerboard.parse_schedule), each number >= 1."""
    try:
        steps = parse_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if min([steps] if isinstance(steps, int) else steps) < 1:
        raise argparse.ArgumentTypeError(f'steps must be >= 1, got {text}')
    return steps


def device_name(text):
    try:
        kind = torch.device(text).type
    except RuntimeError:
        kind = None
    if kind not in ('cpu', 'cuda'):
        raise argparse.ArgumentTypeError(f"expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    return text


def parse_args(argv):
    p = Parser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', required=True, help='checkpoint-last.pth (config inside it or config.yaml '
                   'beside), a .safetensors export or a sharded checkpoint-last.dcp folder')
    p.add_argument('--use_ema', action='store_true', help='sample with the EMA weights')
    p.add_argument(UNSAFE_FLAG, action='store_true', help='allow a full unpickle of a trusted checkpoint')
    p.add_argument('--device', type=device_name, help='cpu or cuda (default: cuda if available)')
    p.add_argument('--cfg', type=bounded(float, 0), default=2.0, help='classifier-free guidance scale (0: off)')
    p.add_argument('--cfg_start_step', type=bounded(int, 0), default=5, help='first step (global) with guidance')
    p.add_argument('--steps_per_scale', type=schedule, default=4,
                   help="sampling schedule: steps for every scale ('4') or one number per scale ('1,4,4,6')")
    p.add_argument('--temperature', type=bounded(float, 0), default=1.0, help='0: argmax')
    p.add_argument('--top_k', type=bounded(int, 0), default=0, help='keep the k most likely codes (0: all)')
    p.add_argument('--top_p', type=bounded(float, 0, 1, lo_open=True), default=1.0, help='nucleus sampling mass')
    p.add_argument('--precision', choices=['auto', *PRECISIONS], default='fp32',
                   help='transformer precision (auto: bf16 where the CPU or GPU multiplies bf16 natively, else '
                        'fp32; fp32 reproduces the published samples exactly)')
    p.add_argument('--seed', type=bounded(int, 0, MAX_BASE_SEED - 1), default=0,
                   help='base seed; sample i uses SEED * 1_000_003 + i')
    p.add_argument('--flops', action='store_true', help='print the counted FLOPs of one sample and exit')
    show = p.add_argument_group('showcase (default mode)')
    which = show.add_mutually_exclusive_group()
    which.add_argument('--labels', type=bounded(int, 0), nargs='+', help='one image per class id')
    which.add_argument('--random_classes', action='store_true', help='NUM_IMAGES classes drawn from --seed '
                                                                     '(default: evenly spaced classes)')
    show.add_argument('--num_images', type=bounded(int, 1), default=16, help='images when --labels is not given')
    show.add_argument('--output_dir', default='samples')
    edits = p.add_argument_group('editing: in-painting, out-painting, class-conditional editing (the labels or '
                                 'NUM_IMAGES samples of the showcase, each an edit of the same image)')
    edits.add_argument('--edit_image', help="an image, center-cropped to the model's size as the training data is")
    how = edits.add_mutually_exclusive_group()
    how.add_argument('--edit_mask', help='what to keep: a mask image of the size of --edit_image (white = keep), or '
                                         "a box 'x0,y0,x1,y1' in pixels of the cropped image that is redrawn")
    how.add_argument('--outpaint', type=bounded(float, 0, 1, lo_open=True),
                     help='out-painting: the image shrunk to this fraction of the side, centred, the rest drawn')
    evaluation = p.add_argument_group('evaluation batch (runs under torchrun too)')
    evaluation.add_argument('--num_samples', type=bounded(int, 1), help='N samples, labels i * num_classes // N')
    evaluation.add_argument('--output_npz', help='ADM-layout .npz: arr_0 (N, H, W, 3) uint8 and labels')
    evaluation.add_argument('--batch_size', type=bounded(int, 1), default=32, help='samples per process and pass')
    args = p.parse_args(argv)
    if (args.num_samples is None) != (args.output_npz is None):
        p.error('--num_samples and --output_npz go together')
    if args.num_samples and (args.labels or args.random_classes or args.flops or args.edit_image):
        p.error('--labels, --random_classes, --flops and --edit_image do not apply to --num_samples (balanced labels)')
    if bool(args.edit_image) != bool(args.edit_mask or args.outpaint):
        p.error('--edit_image goes with one of --edit_mask and --outpaint')
    if args.outpaint == 1:
        p.error('--outpaint must be below 1 (1 keeps the whole image)')
    return args


def sample_settings(args, device):
    """The SampleSettings of the command line on device (--precision auto resolved there)."""
    precision = precision_flag(args.precision, device)
    return SampleSettings(cfg=args.cfg, cfg_start_step=args.cfg_start_step, steps_per_scale=args.steps_per_scale,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, precision=precision)


def showcase_labels(model, args):
    """(B,) labels of the showcase images, or None for an unconditional model."""
    if not model.class_cond:
        if args.labels or args.random_classes:
            raise ConfigError('this model is unconditional: --labels and --random_classes do not apply')
        return None
    if args.labels:
        bad = [label for label in args.labels if label >= model.num_classes]
        if bad:
            raise ConfigError(f'--labels {bad} out of range: this model has classes 0..{model.num_classes - 1}')
        return torch.tensor(args.labels)
    if args.random_classes:
        return torch.randint(model.num_classes, (args.num_images,), generator=torch.Generator().manual_seed(args.seed))
    return balanced_labels(args.num_images, model.num_classes)


def print_flops(model, settings, labels, base_seed):
    """Counted FLOPs of one batch-1 sample (the CFG doubling included), with and without decoding."""
    flops = {}
    for decode in ('top', 'none'):
        with FlopCounterMode(display=False) as counter:
            model.sample(settings, labels=None if labels is None else labels[:1], batch_size=1,
                         seeds=sample_seeds(base_seed, [0]), decode=decode)
        flops[decode] = counter.get_total_flops()
    print(f'FLOPs of one sample: {flops["top"] / 1e9:.4g} GFLOP with decoding, {flops["none"] / 1e9:.4g} GFLOP '
          f'without (cfg {settings.cfg}, schedule {format_schedule(settings.steps_per_scale)}: '
          f'{serial_steps(model.sides, settings.steps_per_scale)} serial steps)')


def samples_grid(images):
    """The showcase grid of decoded images (B, 3, H, W), about square, as an (H', W', 3) uint8 array."""
    return grid_array(images, nrow=math.ceil(math.sqrt(len(images))))


def sample_stages(model, out, i=0):
    """The step-by-step formation stages of sample i of a SampleOutput (util.figures.formation_stages: the
    decoding; formation_frames turns them into frames)."""
    return formation_stages(model.autoenc, [c[i] for c in out.codes], [s[i] for s in out.maps['step']],
                            model.img_size)


def sample_maps(out, i):
    """The maps of sample i of a SampleOutput, as numpy: {'step', 'prob', 'entropy'} -> [(s, s)] per scale."""
    return {k: [m[i].cpu().numpy() for m in out.maps[k]] for k in ('step', 'prob', 'entropy')}


def showcase(model, settings, labels, num_images, base_seed, folder, on_scale=None):
    """Sample with SampleSettings, time it, and write the grid, per-sample PNGs and maps figures, the GIF and
    codes.npz to folder; returns the seconds sampling took and the SampleOutput.

    labels: (B,) class ids, or None for an unconditional model (num_images samples); on_scale(i) is called when
    scale i is drawn."""
    n = num_images if labels is None else len(labels)
    seeds = sample_seeds(base_seed, range(n))
    device = model.seq_positions.device
    start = time.perf_counter()
    out = model.sample(settings, labels=labels, batch_size=n, seeds=seeds, decode='top', on_scale=on_scale)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    print(f'{n} images, {out.num_steps} sequential steps, {1000 * seconds / n:.1f} ms per image ({device})')

    os.makedirs(folder, exist_ok=True)
    images = out.images[-1]  # (B, 3, H, W)
    save_png(samples_grid(images), os.path.join(folder, 'samples_grid.png'))
    extra = {} if labels is None else {'labels': labels.cpu().numpy()}
    with atomic_write(os.path.join(folder, 'codes.npz')) as f:
        np.savez(f, seeds=np.array(seeds), **extra,
                 **{f'codes_{s}': c.cpu().numpy() for s, c in zip(model.sides, out.codes)})
    for i, image in enumerate(to_uint8(images)):
        save_png(image, os.path.join(folder, f'sample_{i:04d}.png'))
        maps = sample_maps(out, i)
        figure = maps_figure(image, maps['step'], maps['prob'], maps['entropy'], model.vocab_size)
        save_figure(figure, os.path.join(folder, f'sample_{i:04d}_maps.png'))
    save_gif(formation_frames(*sample_stages(model, out)), os.path.join(folder, 'sample_0000_forming.gif'))
    print(f'wrote {n} samples, their maps and sample_0000_forming.gif to {folder}')
    return seconds, out


def read_rgb(path, role):
    """A PIL RGB image; ConfigError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except FileNotFoundError:
        raise ConfigError(f'{role} not found: {path}') from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f'{role} {path}: not a readable image ({str(e).splitlines()[0]})') from None


def parse_box(text, size):
    """'x0,y0,x1,y1' -> (x0, y0, x1, y1) ints with 0 <= x0 < x1 <= size (the same for y); ConfigError otherwise."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(','))
    except ValueError:
        raise ConfigError(f"--edit_mask {text}: neither an image file nor a box 'x0,y0,x1,y1' of whole "
                          'pixels') from None
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ConfigError(f'--edit_mask box {text} must lie inside the {size}x{size} image with x0 < x1 and y0 < y1')
    return x0, y0, x1, y1


def edit_inputs(args, size):
    """(image (3, S, S) float in [-1, 1], keep (S, S) bool) of --edit_image with --edit_mask or --outpaint."""
    original = read_rgb(args.edit_image, '--edit_image')
    if args.outpaint or not os.path.isfile(args.edit_mask):
        return edit_arrays(original, size, box=args.edit_mask, outpaint=args.outpaint)
    mask = read_rgb(args.edit_mask, '--edit_mask')
    if mask.size != original.size:
        raise ConfigError(f'--edit_mask {args.edit_mask} is {mask.size[0]}x{mask.size[1]} but --edit_image is '
                          f'{original.size[0]}x{original.size[1]}; give a mask of the same size (white = keep)')
    return edit_arrays(original, size, mask=mask)


def edit_arrays(original, size, mask=None, box=None, outpaint=None):
    """(image (3, S, S) float in [-1, 1], keep (S, S) bool) of a PIL RGB image center-cropped to size as the
    training data is, keeping one of: a PIL mask of its size (white = keep), all but a box 'x0,y0,x1,y1' of the
    cropped image, or (outpaint) the image shrunk to that fraction of the side in the middle of the canvas."""
    image = np.array(center_crop_arr(original, size))  # (S, S, 3) uint8
    keep = np.ones((size, size), dtype=bool)
    if outpaint:
        side = max(1, round(outpaint * size))
        first = (size - side) // 2
        canvas = np.zeros_like(image)
        canvas[first:first + side, first:first + side] = np.asarray(Image.fromarray(image).resize((side, side),
                                                                                                  Image.BICUBIC))
        image, keep = canvas, np.zeros_like(keep)
        keep[first:first + side, first:first + side] = True
    elif mask is not None:
        keep = np.asarray(center_crop_arr(mask.convert('RGB'), size))[..., 0] > 127
    else:
        x0, y0, x1, y1 = parse_box(box, size)
        keep[y0:y1, x0:x1] = False
    return from_uint8(image), torch.from_numpy(keep)


def draw_edits(model, settings, image, keep, labels, num_images, base_seed):
    """Edit image (3, S, S) keeping keep (S, S) with SampleSettings: one sample per label (or num_images for an
    unconditional model), sample i with seed SEED * 1_000_003 + i. Returns the SampleOutput (top scale decoded)."""
    n = num_images if labels is None else len(labels)
    device = model.seq_positions.device
    images, keeps = image[None].expand(n, -1, -1, -1).to(device), keep[None].expand(n, -1, -1).to(device)
    return edit(model, images, keeps, settings, labels, seeds=sample_seeds(base_seed, range(n)), decode='top')


def edit_grid(image, keep, edited):
    """(H', W', 3) uint8: the input (3, S, S), the input with the region not kept (keep (S, S)) dimmed, and the
    edits (n, 3, S, S), in one row."""
    shown = torch.where(keep[None], image, image * 0.3 - 0.7)  # the redrawn region dimmed
    return grid_array(torch.cat([image[None], shown[None], edited.cpu()]), nrow=len(edited) + 2)


def write_edits(model, settings, image, keep, labels, num_images, base_seed, folder):
    """draw_edits, then write edit_input.png, edit_mask.png (white = kept), edit_NNNN.png and edit_grid.png
    (input, kept region, edits) to folder."""
    out = draw_edits(model, settings, image, keep, labels, num_images, base_seed)
    edited = out.images[-1].cpu()  # (n, 3, S, S)
    os.makedirs(folder, exist_ok=True)
    save_png(to_uint8(image[None])[0], os.path.join(folder, 'edit_input.png'))
    save_png(np.repeat(keep.numpy()[..., None] * np.uint8(255), 3, axis=-1), os.path.join(folder, 'edit_mask.png'))
    for i, picture in enumerate(to_uint8(edited)):
        save_png(picture, os.path.join(folder, f'edit_{i:04d}.png'))
    save_png(edit_grid(image, keep, edited), os.path.join(folder, 'edit_grid.png'))
    print(f'wrote {len(edited)} edits to {folder}: edit_grid.png (input, kept region, edits), edit_input.png, '
          'edit_mask.png and edit_NNNN.png')
    return out


class ShardStore:
    """FILE.shards/: settings.json (what the shards were drawn with) and shard_<first index>.npz files, each
    holding `indices`, `images` and (class-conditional) `labels` of one completed batch."""

    def __init__(self, output_npz, settings):
        self.output_npz = output_npz
        self.folder = output_npz + '.shards'
        self.settings = settings

    def check_settings(self):
        """ConfigError if the folder holds shards drawn with other settings."""
        path = os.path.join(self.folder, 'settings.json')
        if not os.path.isfile(path):
            return
        with open(path) as f:
            old = json.load(f)
        changed = [f'{k}: {old.get(k)} -> {v}' for k, v in self.settings.items() if old.get(k) != v]
        if changed:
            raise ConfigError(f'{self.folder} holds shards drawn with other settings ({"; ".join(changed)}); '
                             'delete it or choose another --output_npz')

    def write_settings(self):
        with atomic_write(os.path.join(self.folder, 'settings.json'), 'w') as f:
            json.dump(self.settings, f, indent=1)

    def shard_paths(self):
        return sorted(glob.glob(os.path.join(self.folder, 'shard_*.npz')))

    def done_indices(self):
        done = set()
        for path in self.shard_paths():
            with np.load(path) as shard:
                done.update(shard['indices'].tolist())
        return done

    def write(self, indices, images, labels=None):
        extra = {} if labels is None else {'labels': labels}
        with atomic_write(os.path.join(self.folder, f'shard_{indices[0]:08d}.npz')) as f:
            np.savez(f, indices=indices, images=images, **extra)

    def merge(self, num_samples):
        """All shards in index order -> output_npz (atomic). Raises ValueError if indices are missing."""
        images, labels, seen = None, None, np.zeros(num_samples, dtype=bool)
        for path in self.shard_paths():
            with np.load(path) as shard:
                idx = shard['indices']
                if images is None:
                    images = np.empty((num_samples, *shard['images'].shape[1:]), dtype=np.uint8)
                    labels = np.empty(num_samples, dtype=np.int64) if 'labels' in shard else None
                images[idx] = shard['images']
                if labels is not None:
                    labels[idx] = shard['labels']
                seen[idx] = True
        if not seen.all():
            raise ValueError(f'{self.folder}: {int((~seen).sum())} of {num_samples} samples missing, cannot merge')
        with atomic_write(self.output_npz) as f:
            np.savez(f, arr_0=images, **({} if labels is None else {'labels': labels}))
        return images.shape


def write_sample_npz(model, settings, dist: DistInfo, num_samples, output_npz, batch_size, base_seed, identity):
    """Draw the samples not yet in FILE.shards/ with SampleSettings (rank r takes every world_size-th of them),
    then merge on rank 0. identity: what identifies the run besides the settings (checked when resuming)."""
    store = ShardStore(output_npz, {**identity, **settings.to_dict()})
    store.check_settings()
    if dist.is_main:
        store.write_settings()
    # rank 0's listing for every rank; the gather waits for it, so all shard writes come after the scan
    done = all_gather_objects(store.done_indices() if dist.is_main else None)[0]
    todo = [i for i in range(num_samples) if i not in done]
    mine = todo[dist.rank::dist.world_size]
    if dist.is_main:
        print(f'{len(done)} of {num_samples} samples already in {store.folder}; drawing {len(todo)} '
              f'on {dist.world_size} process(es)')
    bar = tqdm(total=len(todo), unit='img', disable=not dist.is_main, dynamic_ncols=True)
    start = time.perf_counter()
    for indices, labels, images in draw_samples(model, settings, mine, num_samples, base_seed, batch_size):
        store.write(np.array(indices, dtype=np.int64), images, None if labels is None else labels.numpy())
        bar.update(min(len(indices) * dist.world_size, bar.total - bar.n))  # ranks advance alike: global estimate
    bar.close()
    barrier()  # every shard written; the other ranks are done
    if dist.is_main:
        seconds = time.perf_counter() - start
        rate = f'{len(todo) / seconds:.2f} images/s' if todo else 'nothing left to draw'
        shape = store.merge(num_samples)
        print(f'wrote {output_npz}: arr_0 {shape} uint8 ({rate}); shards kept in {store.folder} for resuming')


def run(args):
    if args.device and args.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'--device {args.device}: no GPU available')
    dist = init_distributed(args.device)
    if dist.enabled and not args.num_samples:
        raise ConfigError('only --num_samples runs on several processes')
    model = load_generator(args.checkpoint, args.use_ema, dist.device, allow_unsafe=args.unsafe_load)
    settings = sample_settings(args, dist.device)
    steps = settings.check(model.sides, dist.device)
    if dist.is_main:
        print(f'schedule {format_schedule(settings.steps_per_scale)} over scales {model.sides}: {steps} serial steps, '
              f'{settings.precision}' + (' (--precision auto)' if args.precision == 'auto' else ''))
    if args.num_samples:
        identity = {'checkpoint': os.path.realpath(args.checkpoint), 'use_ema': args.use_ema,
                    'num_samples': args.num_samples, 'seed': args.seed}
        write_sample_npz(model, settings, dist, args.num_samples, args.output_npz, args.batch_size, args.seed,
                         identity)
        return
    labels = showcase_labels(model, args)
    if args.flops:
        print_flops(model, settings, labels, args.seed)
    elif args.edit_image:
        image, keep = edit_inputs(args, model.img_size)
        write_edits(model, settings, image, keep, labels, args.num_images, args.seed, args.output_dir)
    else:
        showcase(model, settings, labels, args.num_images, args.seed, args.output_dir)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_error():
        try:
            run(args)
        finally:
            cleanup()


if __name__ == '__main__':
    main()
