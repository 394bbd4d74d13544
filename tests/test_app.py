"""app.py through gradio_client against the launched app: generate, edit and likelihood return what the library
and main_sample.py return for the same seed and settings; bad input is a message and the next request works;
.safetensors exports load as the checkpoint does."""
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

import app
import main as train_main
import main_sample
from conftest import write_tiny_run
from data.transforms import center_crop_arr
from models import load_generator
from models.likelihood import bits, code_log_likelihood
from models.sample_settings import SampleSettings
from tools.export_safetensors import export
from util.checkpoint import CheckpointError
from util.images import from_uint8

gradio_client = pytest.importorskip('gradio_client')
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A generator trained two steps on a tiny built-in dataset (EMA weights, class names, val images)."""
    folder = tmp_path_factory.mktemp('app')
    write_tiny_run(folder, 'tiny.yaml', (2, 2), args=dict(max_steps=2, ema=0.5))
    train_main.main(['--config', str(folder / 'tiny.yaml'), '--output_dir', str(folder / 'run')])
    return folder


def launched(checkpoint):
    """(session, page, port) of the app serving checkpoint on a free port, in its own thread."""
    session = app.load_session(checkpoint, 'cpu')
    page = app.build_page(session, checkpoint)
    port = free_port()
    page.queue(default_concurrency_limit=1).launch(server_name='127.0.0.1', server_port=port, show_error=True,
                                                   prevent_thread_lock=True, quiet=True)
    return session, page, port


@pytest.fixture(scope='module')
def served(trained):
    """The app serving the tiny trained model, and a client of it."""
    session, page, port = launched(str(trained / 'run' / 'checkpoint-last.pth'))
    yield session, gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False), port
    page.close()


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


def test_generate_draws_what_main_sample_draws(served, trained, tmp_path):
    session, client, _ = served
    grid, gif, maps, info = client.predict(session.classes[3], '1,2,4', 2.0, 1, 1.0, 0, 1.0, 7, 3, 2,
                                           api_name='/generate')
    assert '7 serial steps' in info and os.path.isfile(gif) and os.path.isfile(maps)
    main_sample.main(['--checkpoint', str(trained / 'run' / 'checkpoint-last.pth'), '--use_ema', '--labels', '3', '3',
                      '3', '--seed', '7', '--cfg', '2', '--cfg_start_step', '1', '--steps_per_scale', '1,2,4',
                      '--output_dir', str(tmp_path)])
    assert np.array_equal(pixels(grid), pixels(tmp_path / 'samples_grid.png'))
    assert np.array_equal(pixels(maps), pixels(tmp_path / 'sample_0002_maps.png'))


def test_edit_keeps_what_main_sample_keeps(served, trained, tmp_path):
    session, client, _ = served
    image = session.val_image(5)
    layer = np.zeros((32, 32, 4), dtype=np.uint8)
    layer[8:24, 16:, :] = (255, 0, 0, 255)  # the painted region: redrawn
    Image.fromarray(layer).save(tmp_path / 'layer.png')
    Image.fromarray(np.where(layer[..., 3:] > 0, 0, 255).repeat(3, -1).astype(np.uint8)).save(tmp_path / 'mask.png')
    editor = {'background': gradio_client.handle_file(image),
              'layers': [gradio_client.handle_file(tmp_path / 'layer.png')], 'composite': None}
    grid, info = client.predict(editor, 0, session.classes[1], '2', 2.0, 1, 1.0, 4, 2, api_name='/edit')
    main_sample.main(['--checkpoint', str(trained / 'run' / 'checkpoint-last.pth'), '--use_ema', '--labels', '1', '1',
                      '--seed', '4', '--cfg', '2', '--cfg_start_step', '1', '--steps_per_scale', '2', '--edit_image',
                      image, '--edit_mask', str(tmp_path / 'mask.png'), '--output_dir', str(tmp_path / 'cli')])
    assert np.array_equal(pixels(grid), pixels(tmp_path / 'cli' / 'edit_grid.png')) and '2 edit(s)' in info


def test_likelihood_is_the_library_likelihood(served):
    session, client, _ = served
    image = session.val_image(2)
    figure, table = client.predict(gradio_client.handle_file(image), session.classes[4], '2', api_name='/likelihood')
    model = session.model
    with Image.open(image) as original:
        x = from_uint8(np.asarray(center_crop_arr(original.convert('RGB'), model.img_size)))[None]
    nats = code_log_likelihood(model, model.codes_from_images(x), torch.tensor([4]), SampleSettings(steps_per_scale=2))
    expected = -bits(nats[0])
    shown = [float(line.strip('| ').split(' | ')[1]) for line in table.splitlines()[2:]]  # per scale, then all
    assert shown[:-1] == pytest.approx(expected.tolist(), abs=0.05)
    assert shown[-1] == pytest.approx(float(expected.sum()), abs=0.05) and os.path.isfile(figure)


@pytest.mark.parametrize('request_, message', [  # Gradio's own checks come first for the image and the class
    (lambda s, f: ('/likelihood', (gradio_client.handle_file(f), s.classes[0], '2')), 'cannot identify image file'),
    (lambda s, f: ('/edit', ({'background': gradio_client.handle_file(s.val_image(0)), 'layers': [], 'composite': None},
                             0, s.classes[0], '2', 2.0, 1, 1.0, 0, 1)), 'empty mask'),
    (lambda s, f: ('/likelihood', (gradio_client.handle_file(s.val_image(0)), '99', '2')),
     '99 is not in the list of choices'),
    (lambda s, f: ('/generate', (s.classes[0], '1,4,100', 2.0, 1, 1.0, 0, 1.0, 0, 1, 0)),
     '100 steps for the 4x4 scale, which has only 16 positions'),
])
def test_bad_input_is_a_message_and_the_app_keeps_serving(served, tmp_path, request_, message):
    session, client, _ = served
    (tmp_path / 'notes.png').write_text('not an image')
    api, args = request_(session, tmp_path / 'notes.png')
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=api)
    assert message in str(e.value)
    grid, *_ = client.predict(session.classes[0], '1', 0.0, 0, 1.0, 0, 1.0, 0, 1, 0, api_name='/generate')
    assert os.path.isfile(grid)


def test_a_safetensors_export_loads_the_same_model(trained, tmp_path):
    checkpoint = trained / 'run' / 'checkpoint-last.pth'
    export(str(checkpoint), str(tmp_path / 'model.safetensors'))
    exported = load_generator(tmp_path / 'model.safetensors', use_ema=None)
    original = load_generator(checkpoint, use_ema=True)
    assert exported.config == original.config
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), original.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"no 'model' weights in this file \(load it with --use_ema\)"):
        load_generator(tmp_path / 'model.safetensors', use_ema=False)
    (tmp_path / 'broken.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(CheckpointError, match='not a readable .safetensors file'):
        load_generator(tmp_path / 'broken.safetensors')


def test_without_a_checkpoint_the_page_says_which_command_makes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    page = app.page_for(app.parse_args([]))
    assert app.DEMO_COMMAND in capsys.readouterr().err
    assert any(app.DEMO_COMMAND in str(getattr(block, 'value', '')) for block in page.blocks.values())
    with pytest.raises(SystemExit) as e:
        app.main(['--checkpoint', str(tmp_path / 'missing.pth')])
    assert e.value.code == 2 and 'missing.pth: no such file' in capsys.readouterr().err
