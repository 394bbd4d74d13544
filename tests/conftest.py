"""Shared test helpers: paths of the read-only seed-compatibility fixtures.

The published-format model fixtures (about 47 MB of weights) live in the project's shared folder, not in this
repository; tests that need them are skipped, with one line at the end of the run, when the folder is missing
(a bare clone), and fail under CI (CI=true). The small published checkerboard orders live in tests/fixtures/."""
import os
import sys

import pytest
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get('CHECKERBOARD_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
FIXTURES = os.path.join(SHARED, 'fixtures', 'seed_compat')
# The device of the tests about numbers (fixture parity, cached sampling, bf16): tests/gpu_check.py sets it to
# cuda; the rest of the suite runs on the CPU. On a GPU, TF32 is off so that fp32 means fp32.
DEVICE = torch.device(os.environ.get('CHECKERBOARD_TEST_DEVICE', 'cpu'))
if DEVICE.type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
MISSING = (f'seed-compatibility fixtures not found at {FIXTURES}: set CHECKERBOARD_SHARED to the folder that '
           'holds fixtures/seed_compat to run the tests that need them')


@pytest.fixture(scope='session')
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        if os.environ.get('CI') == 'true':
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return FIXTURES


def pytest_terminal_summary(terminalreporter):
    """One line naming the missing fixture folder when tests were skipped for it."""
    if any(MISSING in str(report.longrepr) for report in terminalreporter.stats.get('skipped', [])):
        terminalreporter.write_line(f'skipped: {MISSING}')


@pytest.fixture
def one_thread():
    """One torch thread: tiny models run fastest so, and decoded pixels can move by one level with the
    thread count (torchrun ranks run one thread each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_run(folder, name, per_class, model=None, args=None):
    """A tiny built-in dataset (folder/shapes, per_class = (train, val) images per class), a random stride-8
    autoencoder (folder/ae.pth, ae.yaml) and a training config folder/NAME over them, with model / args
    entries overriding the tiny defaults."""
    from data.builtin import ensure_builtin_dataset
    from models.autoencoder import VQAutoencoder
    from models.autoencoder_config import AutoencoderConfig
    ensure_builtin_dataset(str(folder / 'shapes'), 'shapes32', train_per_class=per_class[0],
                           val_per_class=per_class[1])
    dd = dict(ch=32, ch_mult=[1, 2, 2, 2], z_channels=32, num_res_blocks=1)
    torch.manual_seed(0)
    autoencoder = VQAutoencoder(AutoencoderConfig(n_embed=64, embed_dim=4, normalize=True, **dd))
    torch.save({'state_dict': autoencoder.state_dict()}, folder / 'ae.pth')
    (folder / 'ae.yaml').write_text(yaml.safe_dump({'model': {'params': dict(embed_dim=4, n_embed=64,
                                                                             normalize=True, ddconfig=dd)}}))
    model = {**dict(img_size=32, scale_ratio=2, class_cond=True, use_head_mlp=False,
                    autoenc=dict(config_path=str(folder / 'ae.yaml'), checkpoint_path=str(folder / 'ae.pth')),
                    llama_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                      num_hidden_layers=2)), **(model or {})}
    args = {**dict(batch_size=8, lr=1e-3, epochs=3, data_path=str(folder / 'shapes'), num_workers=0, log_every=1,
                   device='cpu', precision='fp32'), **(args or {})}
    (folder / name).write_text(yaml.safe_dump({'model': model, 'args': args}))
