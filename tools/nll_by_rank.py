"""Where in the scan order the NLL of one sampling schedule differs from another's, paired by image.

For each checkpoint: the NLL in bits per image of a seeded subset of a split (ADM center crop, or with --views
the TenCrop views training draws from) under each schedule, for the whole image, per scale and per equal part of
each scale's scan ranks (--parts; rank 0 is drawn first), and each schedule minus the reference schedule (the
last one given) with its standard error over the images, paired. With more than one checkpoint, each one's NLL
minus the first's at every schedule, paired by image (the same codes, since the checkpoints must share their
autoencoder). The training noise between two runs is not in these errors: one pair of runs cannot measure it.

    python -m tools.nll_by_rank --data_root data/builtin/shapes32-simple --schedules 1 2 256 \
        --checkpoint outputs/paper_regime_inversion/checkerboard-seed0/checkpoint-last.pth \
                     outputs/paper_regime_inversion/checkerboard-no-replace-seed0/checkpoint-last.pth
"""
import argparse

import torch

from main_sweep import image_codes
from models import load_generator
from models.likelihood import bits, code_log_probs
from models.sample_settings import SampleSettings
from util.errors import UsageError
from util.run_dir import exit_on_error


def rank_bits(model, codes, labels, schedule, batch_size):
    """[(N, s * s)] per scale: the NLL in bits of every code of codes [(N, s, s)], in scan-rank order."""
    settings = SampleSettings(steps_per_scale=schedule)
    batches = []
    for i in range(0, len(labels), batch_size):
        grids = code_log_probs(model, [c[i:i + batch_size] for c in codes],
                               labels[i:i + batch_size] if model.class_cond else None, settings)  # [(b, s, s)]
        batches.append([bits(-grid.flatten(1)) for grid in grids])
    ranked = []
    for i, scale in enumerate(zip(*batches)):
        cells = model.seq_positions[model.scale_slice(i)] - model.offsets[i]  # (n,) cell of each rank
        ranked.append(torch.cat(scale)[:, cells.cpu()])
    return ranked


def image_parts(model, ranked, parts):
    """{name: (N,) bits per image}: the whole image, each scale, and each of `parts` equal rank ranges of a scale
    with at least that many positions."""
    out = {'image': sum(scale.sum(1) for scale in ranked)}
    for side, scale in zip(model.sides, ranked):
        n = side * side
        out[f'{side}x{side}'] = scale.sum(1)
        if parts > 1 and n >= parts:
            for j in range(parts):
                lo, hi = j * n // parts, (j + 1) * n // parts
                out[f'{side}x{side} ranks {lo}-{hi - 1}'] = scale[:, lo:hi].sum(1)
    return out


def paired(x, y):
    """'mean(x - y) ± its standard error' over the images."""
    d = x - y
    return f'{float(d.mean()):+.1f} ± {float(d.std() / len(d) ** 0.5):.1f}'


def schedule_table(nll, schedules):
    """Markdown: NLL per part and schedule, and each schedule minus the last one, paired."""
    ref = schedules[-1]
    head = [f'k = {k}' for k in schedules] + [f'{k} − {ref}' for k in schedules[:-1]]
    rows = ['| part | ' + ' | '.join(head) + ' |', '| --- ' * (len(head) + 1) + '|']
    for name in nll[ref]:
        cells = [f'{float(nll[k][name].mean()):.1f}' for k in schedules]
        cells += [paired(nll[k][name], nll[ref][name]) for k in schedules[:-1]]
        rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def checkpoint_table(first, other, schedules):
    """Markdown: other's NLL minus first's per part and schedule, paired by image."""
    rows = ['| part | ' + ' | '.join(f'k = {k}' for k in schedules) + ' |', '| --- ' * (len(schedules) + 1) + '|']
    for name in first[schedules[-1]]:
        rows.append(f'| {name} | ' + ' | '.join(paired(other[k][name], first[k][name]) for k in schedules) + ' |')
    return '\n'.join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', nargs='+', required=True, help='generator checkpoints (the first is the reference)')
    parser.add_argument('--data_root', required=True, help='the image folder with the split (train/, val/)')
    parser.add_argument('--schedules', type=int, nargs='+', default=[1, 2, 256],
                        help='steps per scale; the last is the reference (default: 1 2 256)')
    parser.add_argument('--split', default='val', choices=['train', 'val'])
    parser.add_argument('--views', action='store_true', help="training's TenCrop views instead of the center crop")
    parser.add_argument('--images', type=int, default=1000, help='images of the split, a seeded subset (default 1000)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--parts', type=int, default=4, help='rank ranges per scale (default 4)')
    parser.add_argument('--batch_size', type=int, default=100)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    subset = {'likelihood_images': args.images, 'seed': args.seed}
    results, codes, autoencoder = [], None, None
    for path in args.checkpoint:
        model = load_generator(path, use_ema=None, device=args.device)
        if codes is None:  # the same codes for every checkpoint, so that the comparison is paired
            codes, labels = image_codes(model, args.data_root, subset, args.split, views=args.views)
            autoencoder = model.autoenc.state_dict()
        elif not all(torch.equal(v, autoencoder[k]) for k, v in model.autoenc.state_dict().items()):
            raise UsageError(f'{path}: its autoencoder is not that of {args.checkpoint[0]}, so the codes differ; '
                             f'compare checkpoints trained on one autoencoder')
        nll = {k: image_parts(model, rank_bits(model, codes, labels, k, args.batch_size), args.parts)
               for k in args.schedules}
        results.append(nll)
        print(f'\n{path}: NLL in bits per image of {len(labels)} {args.split} images '
              f'({"TenCrop views" if args.views else "center crop"}); differences paired, ± standard error\n')
        print(schedule_table(nll, args.schedules))
    for path, nll in zip(args.checkpoint[1:], results[1:]):
        print(f'\n{path} minus {args.checkpoint[0]}, paired by image\n')
        print(checkpoint_table(results[0], nll, args.schedules))


if __name__ == '__main__':
    with exit_on_error():
        main()
