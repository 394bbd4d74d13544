"""Precisions, one list for every command: fp32; tf32 (fp32 tensors, TF32 matmuls and convolutions: GPUs
only); bf16 (autocast). 'auto' picks bf16 where the hardware multiplies bf16 natively, fp32 otherwise."""
import contextlib

import torch

from util.config import ConfigError

PRECISIONS = ('fp32', 'tf32', 'bf16')
AUTOCAST_DTYPES = {'bf16': torch.bfloat16}


def cpu_has_bf16_units():
    """True if the CPU advertises AMX-BF16 or AVX512-BF16 (read from /proc/cpuinfo; False elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def check_precision(precision, device, allow_auto=False):
    """ValueError unless precision is one of PRECISIONS ('auto' too where allowed) and runs on device."""
    names = ('auto', *PRECISIONS) if allow_auto else PRECISIONS
    if precision not in names:
        raise ValueError(f"precision must be one of {', '.join(names)}, got {precision!r}")
    if precision == 'tf32' and torch.device(device).type != 'cuda':
        raise ValueError('precision tf32 is a GPU setting (TF32 matmuls); use fp32 or bf16 on a CPU')


def resolve_precision(precision, device):
    """'auto' -> 'bf16' on GPUs with bf16 and CPUs with bf16 units, else 'fp32'; others are checked and kept."""
    check_precision(precision, device, allow_auto=True)
    if precision != 'auto':
        return precision
    if device.type == 'cuda':
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    return 'bf16' if device.type == 'cpu' and cpu_has_bf16_units() else 'fp32'


def precision_flag(precision, device):
    """resolve_precision for a command's --precision: ConfigError (one line, naming the flag) where it cannot run."""
    try:
        return resolve_precision(precision, device)
    except ValueError as e:
        raise ConfigError(f'--precision {precision}: {e}') from None


@contextlib.contextmanager
def tf32_matmuls(enabled):
    """TF32 matmuls and convolutions on (or off) inside the block, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device, precision, cache=True):
    """The context of a resolved precision: bf16 autocast, TF32 matmuls, or nothing for fp32. cache=False
    stops autocast from caching cast weights, which CUDA graph capture needs."""
    if precision == 'tf32':
        return tf32_matmuls(True)
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=cache)
