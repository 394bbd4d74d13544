"""tools.nll_by_rank: its parts add up to the library's likelihood, and it compares only checkpoints whose codes
are the same."""
import pytest
import torch

import main as train_main
from conftest import write_tiny_run
from main_sweep import image_codes
from models import load_generator
from models.likelihood import bits, code_log_likelihood
from models.sample_settings import SampleSettings
from tools import nll_by_rank
from util.checkpoint import load_checkpoint


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('nll_by_rank')
    write_tiny_run(folder, 'tiny.yaml', (2, 2), args=dict(max_steps=2))
    train_main.main(['--config', str(folder / 'tiny.yaml'), '--output_dir', str(folder / 'run')])
    return folder


def test_parts_add_up_to_the_library_likelihood(checkpoint, one_thread):
    model = load_generator(checkpoint / 'run' / 'checkpoint-last.pth')
    codes, labels = image_codes(model, str(checkpoint / 'shapes'), {'likelihood_images': 6, 'seed': 0})
    for schedule in (1, 2, 16):
        parts = nll_by_rank.image_parts(model, nll_by_rank.rank_bits(model, codes, labels, schedule, 4), 2)
        library = bits(-code_log_likelihood(model, codes, labels, SampleSettings(steps_per_scale=schedule)))  # (N, S)
        torch.testing.assert_close(parts['image'], library.sum(1))
        for i, side in enumerate(model.sides):
            torch.testing.assert_close(parts[f'{side}x{side}'], library[:, i])
            if side * side >= 2:
                halves = [v for name, v in parts.items() if name.startswith(f'{side}x{side} ranks')]
                assert len(halves) == 2
                torch.testing.assert_close(halves[0] + halves[1], library[:, i])


def test_parts_are_in_scan_rank_order(checkpoint, one_thread):
    """At one token per step the last rank of the top scale is carried by no slot, so changing its code changes
    its own NLL and no other: that entry must be the last one of the scale's ranks."""
    model = load_generator(checkpoint / 'run' / 'checkpoint-last.pth')
    codes, labels = image_codes(model, str(checkpoint / 'shapes'), {'likelihood_images': 6, 'seed': 0})
    top, n = len(model.sides) - 1, model.sides[-1] ** 2
    last_cell = int(model.seq_positions[model.scale_slice(top)][-1]) - model.offsets[top]
    changed = [c.clone() for c in codes]
    changed[top].view(len(labels), -1)[:, last_cell] += 1
    changed[top] %= model.autoenc.n_embed
    before, after = (nll_by_rank.rank_bits(model, c, labels, n, 4)[top] for c in (codes, changed))  # (N, n)
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert (after[:, -1] != before[:, -1]).all()


def test_checkpoints_with_different_autoencoders_are_one_line(checkpoint, tmp_path, capsys):
    state = load_checkpoint(checkpoint / 'run' / 'checkpoint-last.pth')
    key = next(k for k in state['model'] if k.startswith('autoenc.') and state['model'][k].is_floating_point())
    state['model'][key] = state['model'][key] + 1
    other = tmp_path / 'other.pth'
    torch.save(state, other)
    with pytest.raises(SystemExit) as exit:
        with nll_by_rank.exit_on_error():
            nll_by_rank.main(['--checkpoint', str(checkpoint / 'run' / 'checkpoint-last.pth'), str(other),
                              '--data_root', str(checkpoint / 'shapes'), '--images', '4', '--schedules', '1', '2'])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {other}: its autoencoder is not that of') and '\n' not in err
