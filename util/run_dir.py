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

LAST_CHECKPOINT = 'checkpoint-last.pth'
CONFIG_FILE = 'config.yaml'
LOG_FILE = 'log.jsonl'


def kept_checkpoint(epoch):
    """File name of the checkpoint kept at the end of epoch."""
    return f'checkpoint-{epoch:04d}.pth'


def find_resume(output_dir, resume=None):
    """The checkpoint to resume from: resume (a file, or a folder holding LAST_CHECKPOINT), else output_dir's
    LAST_CHECKPOINT when it exists, else None. A resume that names nothing is a ConfigError."""
    if not resume:
        path = os.path.join(output_dir, LAST_CHECKPOINT)
        return path if os.path.isfile(path) else None
    path = os.path.join(resume, LAST_CHECKPOINT) if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise ConfigError(f'--resume: no checkpoint at {path}')
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
