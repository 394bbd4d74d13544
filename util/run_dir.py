"""A training run's folder, shared by both trainers: file names, where to resume from, and the stop on a
non-finite loss; and how every command reports a failure (one line, exit status)."""
import contextlib
import math
import os
import sys

from util.atomic import DiskFullError
from util.config import ConfigError
from util.errors import UsageError
from util.distributed import on_every_rank
from util.sharded_checkpoint import POINTER, SHARDED_SUFFIX, is_sharded_checkpoint

LAST_CHECKPOINT = 'checkpoint-last.pth'
SHARDED_LAST_CHECKPOINT = 'checkpoint-last' + SHARDED_SUFFIX  # a folder, written under --fsdp
CONFIG_FILE = 'config.yaml'
LOG_FILE = 'log.jsonl'


def kept_checkpoint(epoch, sharded=False):
    """Name of the checkpoint kept at the end of epoch (a sharded checkpoint's folder when sharded)."""
    return f'checkpoint-{epoch:04d}' + (SHARDED_SUFFIX if sharded else '.pth')


def last_checkpoint(folder):
    """The newer of folder's LAST_CHECKPOINT and SHARDED_LAST_CHECKPOINT (by the time its last save completed),
    or None when it holds neither."""
    single, sharded = os.path.join(folder, LAST_CHECKPOINT), os.path.join(folder, SHARDED_LAST_CHECKPOINT)
    markers = {single: single, sharded: os.path.join(sharded, POINTER)}  # the file a complete save ends with
    done = {path: os.path.getmtime(marker) for path, marker in markers.items() if os.path.isfile(marker)}
    return max(done, key=done.get) if done else None


def find_resume(output_dir, resume=None):
    """The checkpoint to resume from: resume (a file, a sharded checkpoint folder, or a run folder: its
    last_checkpoint), else output_dir's last_checkpoint, else None. A resume that names nothing is a ConfigError."""
    if not resume:
        return last_checkpoint(output_dir)
    if is_sharded_checkpoint(resume):
        found = os.path.isfile(os.path.join(resume, POINTER))
        path = resume
    else:
        path = last_checkpoint(resume) if os.path.isdir(resume) else resume
        found = path is not None and os.path.isfile(path)
    if not found:
        raise ConfigError(f'--resume: no checkpoint at {path or resume}')
    return path


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving."""


def check_finite(loss, step, output_dir, device):
    """NonFiniteLoss on every rank unless loss (this rank's float) is finite on all of them."""
    if not on_every_rank(math.isfinite(loss), device):
        raise NonFiniteLoss(f'non-finite loss at step {step} (this rank: {loss}); stopping without saving, the '
                            f'last checkpoint in {output_dir} is left as it was (lower the learning rate or '
                            'check the data)')


@contextlib.contextmanager
def exit_on_error():
    """A command's expected failures as one 'error: ...' line on stderr (docs/design.md, the error policy):
    the project's UsageErrors (bad input: config, checkpoint, data, flag value) exit with status 2, a
    non-finite loss or a full disk with status 1. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLoss, DiskFullError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
