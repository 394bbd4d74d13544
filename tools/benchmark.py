"""Sampling and training-step throughput of a random-weight generator, against the matmul peak measured in
the same process. Prints figures; writes nothing.

    python -m tools.benchmark --config configs/config_256_S.yaml --batch_size 8 --cfg 2.0 --steps_per_scale 4
    python -m tools.benchmark --config configs/config_256_L.yaml --batch_size 8 64 256 --precision bf16 tf32 \
        --train_batch_size 64 --device cuda
    python -m tools.benchmark --config configs/shapes32.yaml --autoenc_config train_ae_codebook/configs/shapes32.yaml \
        --skip_sampling --train_batch_size 64 --precision fp32 --compile
"""
import argparse
import statistics
import time
from unittest import mock

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from models import build_generator
from models.generator_config import GeneratorConfig
from models.graphed_sampler import GraphedSampler
from models.sample_settings import SampleSettings
from util.precision import PRECISIONS, autocast, check_precision


def timed(fn, repeats):
    """Median wall time of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device, precision, size=2048, repeats=5):
    """Best GFLOP/s of a size^3 matmul in this precision."""
    dtype = torch.bfloat16 if precision == 'bf16' else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size ** 3 / timed(lambda: a @ b, repeats) / 1e9


def counted_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def random_model(config_path, device, autoenc_config=None):
    with open(config_path) as f:
        model_cfg = yaml.safe_load(f)['model']
    if autoenc_config:
        model_cfg['autoenc'] = {**model_cfg['autoenc'], 'config_path': autoenc_config}
    config = GeneratorConfig.from_dict(model_cfg, source=config_path)
    if config.class_cond and not config.num_classes:
        config = config.replace(num_classes=10)  # configs of built-in data leave it to the dataset (10 classes)
    model = build_generator(config, load_autoencoder_checkpoint=False, device=device).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # zero at init: give the logits some spread
    return model


def random_batch(model, batch, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = [torch.randint(model.vocab_size, (batch, s, s), generator=gen).to(device) for s in model.sides]
    labels = torch.randint(max(model.num_classes, 1), (batch,), generator=gen).to(device)
    return codes, labels if model.class_cond else None


class GrowingKVCache:
    """The published formulation of the cache: keys and values concatenated step by step (a new allocation
    and a copy of the whole cache at every step), for the baseline."""

    def __init__(self):
        self.k = self.v = None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


def growing_cache_baseline(model, run):
    """Time-able call of run() with the model's preallocated KV caches swapped for growing ones."""
    def baseline():
        with mock.patch.object(model.llama, 'new_caches', lambda *args: [GrowingKVCache() for _ in model.llama.layers]):
            return run()
    return baseline


def scale_times(model, settings, kwargs, device):
    """Seconds spent on each scale in one sampling run (synchronized at every scale's end)."""
    marks = []

    def mark(i):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    model.sample(settings, **kwargs, on_scale=mark)
    return [b - a for a, b in zip([start] + marks[:-1], marks)]


def bench_sampling(model, batch, settings, repeats, graphed, device):
    """(counted FLOPs, median seconds, tokens, peak memory in MiB or None, seconds of the growing-cache
    baseline, seconds of the graphed sampler or None, seconds per scale) of sampling one batch."""
    labels = torch.arange(batch, device=device) % max(model.num_classes, 1) if model.class_cond else None
    kwargs = dict(labels=labels, batch_size=None if model.class_cond else batch, seeds=list(range(batch)),
                  decode='none')
    run = lambda: model.sample(settings, **kwargs)  # noqa: E731
    flops = counted_flops(run)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(run, repeats)
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None
    baseline = timed(growing_cache_baseline(model, run), repeats)
    per_scale = scale_times(model, settings, kwargs, device)
    graphed_seconds = None
    if graphed:  # the same batch as one CUDA graph (on a CPU: the same static path, uncaptured)
        sampler = GraphedSampler(model, batch, settings)
        graphed_seconds = timed(lambda: sampler(labels=labels, seeds=list(range(batch)), decode='none'), repeats)
    return flops, seconds, batch * model.num_positions, memory, baseline, graphed_seconds, per_scale


def masked_baseline_forward(model, codes, labels):
    """The plain formulation: a dense additive float mask per sample (B, 1, L, L), as in the published code."""
    blocks = model.eval_block_sizes(model.num_blocks_per_scale)
    inputs, targets, carried_pos, block_ids = model.sequence_inputs(codes, blocks, [False] * len(model.sides))
    inputs, cond, cur, past, block_ids = model.full_sequence(inputs, labels, carried_pos, block_ids)
    mask = torch.where(block_ids[None, :] <= block_ids[:, None], 0.0, -1e9).expand(inputs.shape[0], 1, -1, -1)
    h = model.llama(inputs, cond, cur, past, mask)
    h = h[:, 1:] if model.class_cond else h
    return torch.nn.functional.cross_entropy(model.head(h).flatten(0, 1).float(), targets.flatten())


def bench_training(model, args, device, precision, baseline=False):
    """Training-step tokens/s of this project's forward and, when baseline, of the plain dense-mask one, their
    steps interleaved (one after the other, repeats times) so that the machine's drift hits both alike: (ours,
    plain or None)."""
    model.train()
    codes, labels = random_batch(model, args.train_batch_size, device)
    gen = torch.Generator(device).manual_seed(0)

    def step(plain):
        with autocast(device, precision):
            loss = masked_baseline_forward(model, codes, labels) if plain else model(codes, labels, gen)[0]
        loss.backward()
        model.zero_grad(set_to_none=True)

    kinds = [False, True] if baseline else [False]
    times = {kind: [] for kind in kinds}
    for kind in kinds:
        step(kind)  # warm-up (compiles under --compile)
    for _ in range(args.repeats):
        for kind in kinds:
            start = time.perf_counter()
            step(kind)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            times[kind].append(time.perf_counter() - start)
    model.eval()
    rates = {kind: args.train_batch_size * model.num_positions / statistics.median(t) for kind, t in times.items()}
    return rates[False], rates.get(True)


def logit_agreement(model, device):
    """max |bf16 - fp32| over the std of the fp32 logits, teacher forced on random codes."""
    codes, labels = random_batch(model, 4, device, seed=1)
    with torch.no_grad():
        ref = model.teacher_forced_logits(codes, labels, 4)[0].float()
        with autocast(device, 'bf16'):
            low = model.teacher_forced_logits(codes, labels, 4)[0].float()
    return ((low - ref).abs().max() / ref.std()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/config_256_S.yaml')
    parser.add_argument('--batch_size', type=int, nargs='+', default=[8], help='sampling batch sizes')
    parser.add_argument('--train_batch_size', type=int, default=8)
    parser.add_argument('--cfg', type=float, default=2.0)
    parser.add_argument('--steps_per_scale', type=int, default=4)
    parser.add_argument('--precision', nargs='+', default=['fp32', 'bf16'], choices=PRECISIONS,
                        help='tf32: fp32 tensors with TF32 matmuls and convolutions (GPUs only)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--graphed', action='store_true', help='also time models.graphed_sampler (a CUDA graph)')
    parser.add_argument('--skip_training', action='store_true')
    parser.add_argument('--skip_sampling', action='store_true')
    parser.add_argument('--compile', action='store_true', help='also time the training step with --compile')
    parser.add_argument('--autoenc_config', help="the autoencoder's architecture config (default: the config's)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = random_model(args.config, device, args.autoenc_config)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('autoenc.'))
    print(f'{args.config}: {params / 1e6:.1f}M generator parameters, sides {model.sides}, '
          f'{model.num_positions} tokens/image, device {device}, {torch.get_num_threads()} threads')
    results = {}
    for name in args.precision:
        try:
            check_precision(name, device)
        except ValueError as e:
            raise SystemExit(f'error: --precision: {e}') from None
        settings = SampleSettings(cfg=args.cfg, steps_per_scale=args.steps_per_scale, precision=name)
        with autocast(device, name):  # tf32: TF32 matmuls
            peak = matmul_peak(device, name)
        for batch in [] if args.skip_sampling else args.batch_size:
            flops, seconds, tokens, memory, baseline, graphed, per_scale = bench_sampling(
                model, batch, settings, args.repeats, args.graphed, device)
            achieved = flops / seconds / 1e9
            results[name] = seconds
            print(f'[{name}] matmul peak {peak:.0f} GFLOP/s | sampling batch {batch} cfg {args.cfg} '
                  f'{args.steps_per_scale} steps/scale: {seconds:.2f} s, {batch / seconds:.2f} images/s, '
                  f'{tokens / seconds:.0f} tokens/s, {flops / 1e9:.0f} GFLOP counted, {achieved:.0f} GFLOP/s = '
                  f'{100 * achieved / peak:.0f}% of peak' + (f', peak memory {memory:.0f} MiB' if memory else ''))
            print(f'[{name}] time per scale ' + ', '.join(f'{s}x{s} {1000 * t:.1f} ms'
                                                          for s, t in zip(model.sides, per_scale)))
            print(f'[{name}] baseline with a growing KV cache (as published), batch {batch}: {baseline:.3f} s, '
                  f'{batch / baseline:.2f} images/s (the preallocated cache is {baseline / seconds:.2f}x as fast)')
            if graphed:
                print(f'[{name}] graphed sampler, batch {batch}: {graphed:.3f} s, {batch / graphed:.2f} images/s '
                      f'({seconds / graphed:.2f}x the eager sampler, {baseline / graphed:.2f}x the baseline), '
                      f'{100 * flops / graphed / 1e9 / peak:.0f}% of peak')
        if not args.skip_training:
            ours, plain = bench_training(model, args, device, name, baseline=True)
            print(f'[{name}] matmul peak {peak:.0f} GFLOP/s | training step (forward+backward, batch '
                  f'{args.train_batch_size}, cached codes, interleaved medians of {args.repeats}): {ours:.0f} '
                  f'tokens/s; plain dense-mask forward/backward {plain:.0f} tokens/s ({ours / plain:.2f}x)')
            if args.compile:
                start = time.perf_counter()
                model.compile_for_training()
                compiled, _ = bench_training(model, args, device, name)  # its warm-up step compiles
                step_seconds = args.train_batch_size * model.num_positions / compiled
                compile_seconds = time.perf_counter() - start - (args.repeats + 1) * step_seconds
                model.compiled_transformer = None
                print(f'[{name}] training step with --compile: {compiled:.0f} tokens/s '
                      f'({compiled / ours:.2f}x eager; compiling took {compile_seconds:.0f} s)')
    if 'fp32' in results and 'bf16' in results:
        print(f'bf16 sampling speed-up over fp32: {results["fp32"] / results["bf16"]:.2f}x; '
              f'bf16 logits: max |bf16 - fp32| / std(fp32) = {logit_agreement(model, device):.3f}')


if __name__ == '__main__':
    main()
