"""Metrics logging on rank 0: a JSONL file (one record per line) and TensorBoard when it is installed."""
import json
import os

from util.atomic import atomic_write


class RunLog:
    """Append-only JSONL metrics log; also written to TensorBoard if available. A no-op off rank 0."""

    def __init__(self, output_dir, enabled=True, name='log.jsonl'):
        self.enabled = enabled
        self.path = os.path.join(output_dir, name)
        self.tb = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(output_dir, 'tensorboard'))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, step, record):
        """record: dict of numbers (and strings); step: the global optimizer step."""
        if not self.enabled:
            return
        record = {'step': step, **record}
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != 'step':
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, step):
        """Drop records past step (a resumed run rewrites them)."""
        if not (self.enabled and os.path.isfile(self.path)):
            return
        with open(self.path) as f:
            keep = [line for line in f if json.loads(line).get('step', 0) <= step]
        with atomic_write(self.path, 'w') as f:
            f.writelines(keep)

    def close(self):
        if self.tb is not None:
            self.tb.close()
