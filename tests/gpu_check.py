"""One prepared check of the CUDA path, end to end, with one summary table:

    python tests/gpu_check.py                    # on a GPU machine: about 6 minutes on one H200
    python tests/gpu_check.py --device cpu       # the same steps on the CPU (what tests/test_gpu_check.py runs)

1. numbers: the fixture-parity, cached-sampling, bf16 and graphed-sampler tests with their tensors on the device
   (fp32, TF32 off; on a GPU the graphed sampler really captures a CUDA graph);
2. train: a tiny config under `torchrun --nproc_per_node 1` (NCCL on a GPU, gloo on a CPU), bf16 and --compile
   on a GPU (fp32, and --compile only when a C++ compiler is found, on a CPU), stopped after 2 steps and resumed
   to 4, against an uninterrupted 4-step run;
3. sample npz: `main_sample.py --num_samples` under torchrun from that checkpoint, merged into an ADM .npz;
4. benchmark: tools.benchmark on the Checkerboard-L shape (random weights) on a GPU, on the tiny config on a CPU;
5. serving: tools.load_test, the app under 16 concurrent clients of 16 images each, on the demo checkpoint on a GPU
   (outputs/demo/checkpoint-last.pth or --serving_checkpoint; where neither is there, the demo config trained for
   50 steps: the same shape, and the sampler's time does not depend on the weights), with the Gradio floor; on a
   CPU, 2 clients of 2 images on the tiny checkpoint. The detail has the summary lines: whether every round of
   concurrent requests is within 3x a solo request's latency (the serving bound).
On a machine without a GPU every step runs on the CPU, and the table says so. Exit status 1 if a step fails (for
serving: a request failed; the bound is reported, not required).
"""
import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from conftest import write_tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER_TESTS = "tests/test_generator.py tests/test_autoencoder.py -k 'published or cached_sampling or bf16 or graphed'"


def run(command, env=None, timeout=900, keep=None, width=160):
    """(ok, lines of the output) of a command run in the repository: those that contain `keep` where it is given
    and the command succeeded, else the last 3."""
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    lines = (done.stdout + done.stderr).strip().splitlines()
    kept = [line for line in lines if keep in line] if keep and done.returncode == 0 else []
    return done.returncode == 0, ' | '.join(line.strip()[:width] for line in kept or lines[-3:])


def torchrun(*args):
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--master_port',
            str(29500 + os.getpid() % 1000), *args]


def has_compiler():
    from torch._inductor import cpp_builder
    try:
        cpp_builder.get_cpp_compiler()
        return True
    except Exception:
        return False


def losses(folder):
    with open(os.path.join(folder, 'log.jsonl')) as f:
        return [record['loss'] for record in map(json.loads, f) if 'loss' in record]


def check_numbers(device, selection):
    return run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *shlex.split(selection)],
               env={'CHECKERBOARD_TEST_DEVICE': device})


def check_training(device, compile_mode, work):
    """Stop after 2 steps, resume to 4, compare with 4 straight steps."""
    compiled = compile_mode == 'on' or compile_mode == 'auto' and (device == 'cuda' or has_compiler())
    write_tiny_run(work, 'tiny.yaml', (4, 2), args=dict(device=device, precision='bf16' if device == 'cuda' else 'fp32',
                                                       compile=compiled, ema=0.9))
    flags = ['main.py', '--config', str(work / 'tiny.yaml')]
    for out, steps in (('resumed', 2), ('resumed', 4), ('straight', 4)):
        ok, tail = run(torchrun(*flags, '--output_dir', str(work / out), '--max_steps', str(steps)))
        if not ok:
            return False, f'{out} {steps} steps: {tail}'
    resumed, straight = losses(work / 'resumed'), losses(work / 'straight')
    gap = max(abs(a - b) for a, b in zip(resumed, straight))
    ok = len(resumed) == len(straight) == 4 and gap <= 1e-3 * max(1.0, abs(straight[-1]))
    return ok, (f'{"compiled, " if compiled else ""}losses {", ".join(f"{v:.4f}" for v in straight)}; resumed '
                f'run differs by {gap:.1e}')


def check_sampling(work):
    out = work / 'samples.npz'
    ok, tail = run(torchrun('main_sample.py', '--checkpoint', str(work / 'straight' / 'checkpoint-last.pth'),
                            '--num_samples', '8', '--batch_size', '4', '--output_npz', str(out)))
    if not ok:
        return False, tail
    with np.load(out) as npz:
        shape = npz['arr_0'].shape
    return shape == (8, 32, 32, 3), f'arr_0 {shape}, labels and shards written'


def check_benchmark(device, work):
    if device == 'cuda':
        flags = ['--config', 'configs/config_256_L.yaml', '--batch_size', '8', '64', '256', '--precision', 'bf16',
                 'tf32', '--train_batch_size', '64', '--graphed']
    else:
        flags = ['--config', str(work / 'tiny.yaml'), '--autoenc_config', str(work / 'ae.yaml'), '--batch_size',
                 '2', '--precision', 'fp32', '--repeats', '1', '--train_batch_size', '2']
    return run([sys.executable, '-m', 'tools.benchmark', *flags, '--device', device])


def check_serving(device, checkpoint, work):
    """tools.load_test on the app: the issue's load on a GPU, a small one on the CPU."""
    if device == 'cuda':
        if not os.path.isfile(checkpoint):
            ok, tail = run([sys.executable, 'main.py', '--config', 'configs/demo.yaml', '--output_dir',
                            str(work / 'demo'), '--max_steps', '50', '--eval_freq', '0', '--showcase_images', '0'])
            if not ok:
                return False, f'training a demo-shaped checkpoint: {tail}'
            checkpoint = str(work / 'demo' / 'checkpoint-last.pth')
        load = ['--clients', '16', '--images', '16', '--rounds', '3', '--floor', '--model_alone']
    else:
        checkpoint = str(work / 'straight' / 'checkpoint-last.pth')
        load = ['--clients', '2', '--images', '2', '--rounds', '1', '--solo', '2', '--model_alone']
    ok, detail = run([sys.executable, '-m', 'tools.load_test', '--checkpoint', checkpoint, '--app_args',
                      f'--device {device}', *load], keep='summary', width=400)
    return ok, f'{checkpoint}: {detail}'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--number_tests', default=NUMBER_TESTS, help='pytest arguments of step 1, as one string')
    parser.add_argument('--compile', choices=['auto', 'on', 'off'], default='auto',
                        help='--compile in the training step (auto: on a GPU, or on a CPU with a C++ compiler)')
    parser.add_argument('--serving_checkpoint', default='outputs/demo/checkpoint-last.pth',
                        help='the checkpoint of the serving step on a GPU (where it is missing: the demo config '
                             'trained for 50 steps)')
    args = parser.parse_args(argv)
    where = (torch.cuda.get_device_name() if args.device == 'cuda'
             else 'CPU (no GPU on this machine: every step runs on the CPU)')
    print(f'GPU check on {where}')
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        for name, check in (('numbers', lambda: check_numbers(args.device, args.number_tests)),
                            ('train', lambda: check_training(args.device, args.compile, work)),
                            ('sample npz', lambda: check_sampling(work)),
                            ('benchmark', lambda: check_benchmark(args.device, work)),
                            ('serving', lambda: check_serving(args.device, args.serving_checkpoint, work))):
            start = time.perf_counter()
            ok, detail = check()
            rows.append((name, 'PASS' if ok else 'FAIL', time.perf_counter() - start, detail))
            print(f'{name}: {rows[-1][1]} ({rows[-1][2]:.0f} s)', flush=True)
    print('\n| step | result | seconds | detail |\n| --- | --- | --- | --- |')
    for name, result, seconds, detail in rows:
        print(f'| {name} | {result} | {seconds:.0f} | {detail} |')
    return 0 if all(result == 'PASS' for _, result, _, _ in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
