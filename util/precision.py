"""Mixed precision: bf16 autocast where the hardware multiplies bf16 natively, fp32 otherwise."""
import contextlib

import torch

DTYPES = {'fp32': None, 'bf16': torch.bfloat16}


def cpu_has_bf16_units():
    """True if the CPU advertises AMX-BF16 or AVX512-BF16 (read from /proc/cpuinfo; False elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def resolve_precision(precision, device):
    """'auto' -> 'bf16' on GPUs with bf16 and CPUs with bf16 units, else 'fp32'; others pass through."""
    if precision != 'auto':
        if precision not in DTYPES:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        return precision
    if device.type == 'cuda':
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    return 'bf16' if device.type == 'cpu' and cpu_has_bf16_units() else 'fp32'


def autocast(device, precision, cache=True):
    """Autocast context for a resolved precision ('fp32' gives a no-op context). cache=False stops autocast
    from caching cast weights, which CUDA graph capture needs."""
    if DTYPES[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision], cache_enabled=cache)
