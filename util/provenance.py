"""Where a result came from: the code version, the bytes of an input file, the software and the machine."""
import hashlib
import os
import platform
import subprocess

import torch


def file_sha256(path, chunk=1 << 20):
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_version(root=None, ignore=()):
    """{'commit': HEAD's hash or None outside a git checkout, 'clean': whether tracked files match it}. Tracked
    files under the folders in `ignore` (results the caller itself writes, such as a sweep's tables) do not count."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    relative = [os.path.relpath(os.path.abspath(folder), root) for folder in ignore]
    excluded = [f':(exclude){folder}' for folder in relative if not folder.startswith('..')]  # git refuses outside

    def git(*args):
        return subprocess.run(['git', *args], cwd=root, capture_output=True, text=True, timeout=60)

    try:
        head = git('rev-parse', 'HEAD')
        status = git('status', '--porcelain', '--untracked-files=no', '--', '.', *excluded)
    except (OSError, subprocess.SubprocessError):
        return {'commit': None, 'clean': None}
    if head.returncode or status.returncode:
        return {'commit': None, 'clean': None}
    return {'commit': head.stdout.strip(), 'clean': status.stdout.strip() == ''}


def short_version(version):
    """'abc1234', 'abc1234+changes' (tracked files differed from the commit) or 'unknown'."""
    if not version or not version.get('commit'):
        return 'unknown'
    return version['commit'][:7] + ('' if version.get('clean') else '+changes')


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (else platform's processor string)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def machine(device):
    """The device a measurement ran on, in words: the GPU's name, or the CPU's with its thread count."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{cpu_name()}, {torch.get_num_threads()} torch thread(s)'


def software():
    """Versions that decide the numbers: torch and Python."""
    return {'torch': torch.__version__, 'python': platform.python_version()}
