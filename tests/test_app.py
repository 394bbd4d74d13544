"""app.py through gradio_client against the launched app: generate, edit and likelihood return what the library
and main_sample.py return for the same seed and settings; bad input is a message and the next request works;
.safetensors exports load as the checkpoint does."""
import concurrent.futures
import functools
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import app
import main as train_main
import main_sample
import models.load
from conftest import write_tiny_run
from data.transforms import center_crop_arr
from models import load_generator
from models.likelihood import bits, code_log_likelihood
from models.sample_batches import sample_seeds
from models.sample_settings import SampleSettings
from tools.export_safetensors import export
from util import precision
from util.checkpoint import CheckpointError
from util.config import ConfigError
from util.figures import maps_image
from util.images import from_uint8, to_uint8

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


def launched(checkpoint, **session_options):
    """(session, page, port) of the app serving checkpoint on a free port, in its own thread."""
    session = app.load_session(checkpoint, 'cpu', **session_options)
    page = app.build_page(session, checkpoint)
    port = free_port()
    app.launch(page, session.batcher.max_waiting, port=port, prevent_thread_lock=True, quiet=True)
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


GENERATE = dict(schedule='1,2,4', cfg=2.0, cfg_start_step=1, temperature=1.0, top_k=0, top_p=1.0)


def generate(client, label, seed, count, shown=0, **changes):
    """(grid, gif, maps, info) of a /generate request with GENERATE's settings and changes."""
    s = {**GENERATE, **changes}
    return client.predict(label, s['schedule'], s['cfg'], s['cfg_start_step'], s['temperature'], s['top_k'],
                          s['top_p'], seed, count, shown, api_name='/generate')


def test_generate_draws_what_main_sample_draws(served, trained, tmp_path):
    session, client, _ = served
    grid, gif, maps, info = generate(client, session.classes[3], seed=7, count=3, shown=2)
    assert '7 serial steps' in info and 'fp32' in info and os.path.isfile(gif)
    main_sample.main(['--checkpoint', str(trained / 'run' / 'checkpoint-last.pth'), '--use_ema', '--labels', '3', '3',
                      '3', '--seed', '7', '--cfg', '2', '--cfg_start_step', '1', '--steps_per_scale', '1,2,4',
                      '--output_dir', str(tmp_path)])
    assert np.array_equal(pixels(grid), pixels(tmp_path / 'samples_grid.png'))
    settings = SampleSettings(cfg=2.0, cfg_start_step=1, steps_per_scale=(1, 2, 4))
    out = session.model.sample(settings, labels=torch.tensor([3, 3, 3]), seeds=sample_seeds(7, range(3)),
                               decode='top')
    expected = main_sample.sample_maps(out, 2)
    image = to_uint8(out.images[-1][2:])[0]
    assert np.array_equal(pixels(maps), maps_image(image, expected['step'], expected['prob'], expected['entropy'],
                                                   session.model.vocab_size))
    with Image.open(gif) as animation:
        assert animation.n_frames == 7  # one frame per serial step


class HeldModel:
    """Keeps the app's model busy with a request of its own until released, so that the requests sent meanwhile
    wait together and run as one batch."""

    def __init__(self, session):
        self.session, self.release = session, threading.Event()
        self.thread = threading.Thread(target=session.batcher.submit, args=(('edit', object()), self.hold))
        self.thread.start()

    def hold(self):
        self.release.wait(60)

    def when_waiting(self, count):
        """Release the model once count requests wait for it."""
        start = time.time()
        while len(self.session.batcher.waiting) < count:
            assert time.time() - start < 60, f'{len(self.session.batcher.waiting)} of {count} requests arrived'
            time.sleep(0.02)
        self.release.set()
        self.thread.join(10)


def concurrently(port, calls):
    """The results of calls (each a function of a client), made at once from threads, each with its own client;
    an exception is returned as the result."""
    clients = [gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False) for _ in calls]
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call, client) for call, client in zip(calls, clients)]
        return [future.exception() or future.result() for future in futures]


def batch_number(info):
    return int(re.search(r'in batch (\d+) with', info).group(1))


def test_concurrent_requests_share_one_batch_and_get_their_solo_images(served):
    session, client, port = served
    requests = [(session.classes[1], 3, 2), (session.classes[4], 11, 3), (session.classes[1], 5, 1)]
    held = HeldModel(session)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        release = pool.submit(held.when_waiting, len(requests))
        batched = concurrently(port, [functools.partial(generate, label=label, seed=seed, count=count, shown=count - 1)
                                      for label, seed, count in requests])
        release.result()
    infos = [info for *_, info in batched]
    assert len({batch_number(info) for info in infos}) == 1, infos
    assert all('with 2 other request(s), 6 images in all' in info for info in infos)
    for (label, seed, count), (grid, gif, maps, info) in zip(requests, batched):
        solo_grid, solo_gif, solo_maps, solo_info = generate(client, label, seed, count, shown=count - 1)
        assert 'with 0 other request(s)' in solo_info
        assert np.array_equal(pixels(grid), pixels(solo_grid)) and np.array_equal(pixels(maps), pixels(solo_maps))
        assert open(gif, 'rb').read() == open(solo_gif, 'rb').read()


def test_a_bad_request_among_concurrent_ones_fails_alone(served):
    session, client, port = served
    held = HeldModel(session)
    bad = functools.partial(generate, label=session.classes[0], seed=1, count=2, schedule='1,4,100')
    good = [functools.partial(generate, label=session.classes[2], seed=seed, count=2) for seed in (8, 9)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        release = pool.submit(held.when_waiting, 2)  # the bad one is refused before it waits for the model
        results = concurrently(port, [good[0], bad, good[1]])
        release.result()
    assert isinstance(results[1], Exception) and '100 steps for the 4x4 scale' in str(results[1])
    assert batch_number(results[0][3]) == batch_number(results[2][3])
    for call, result in zip(good, (results[0], results[2])):
        assert np.array_equal(pixels(result[0]), pixels(call(client)[0]))


def test_concurrent_likelihoods_share_one_batch_and_equal_their_solo_ones(served):
    session, client, port = served
    requests = [(session.val_image(i), session.classes[i]) for i in (1, 6)]
    call = [functools.partial(lambda c, image, label: c.predict(gradio_client.handle_file(image), label, '2',
                                                               api_name='/likelihood'), image=image, label=label)
            for image, label in requests]
    held = HeldModel(session)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        release = pool.submit(held.when_waiting, 2)
        batched = concurrently(port, call)
        release.result()
    for one, (figure, table) in zip(call, batched):
        solo_figure, solo_table = one(client)
        assert table == solo_table and np.array_equal(pixels(figure), pixels(solo_figure))


def test_request_files_do_not_accumulate(trained):
    session, page, port = launched(str(trained / 'run' / 'checkpoint-last.pth'), max_queue=2)
    try:
        client = gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False)
        assert session.files.keep == 16
        for seed in range(7):
            generate(client, session.classes[0], seed, 1)
            written = 3 * (seed + 1)  # the GIF, the grid and the maps of each request
            names = sorted(os.listdir(session.files.folder))
            assert [int(name[:8]) for name in names] == list(range(max(0, written - 16), written))
            assert {name[8:] for name in names} == {'.gif', '.png'}
    finally:
        page.close()


def test_precision_auto_is_bf16_where_the_cpu_multiplies_bf16(trained, monkeypatch):
    checkpoint = str(trained / 'run' / 'checkpoint-last.pth')
    monkeypatch.setattr(precision, 'cpu_has_bf16_units', lambda: True)
    session = app.load_session(checkpoint, 'cpu', precision='auto')
    assert session.precision == 'bf16' and session.settings('2').precision == 'bf16'
    page = app.build_page(session, checkpoint)
    assert 'the transformer runs in bf16 on cpu' in page.blocks[next(
        i for i, b in page.blocks.items() if getattr(b, 'elem_id', None) == 'header')].value
    monkeypatch.setattr(precision, 'cpu_has_bf16_units', lambda: False)
    assert app.load_session(checkpoint, 'cpu', precision='auto').precision == 'fp32'
    with pytest.raises(ConfigError, match='--precision tf32: precision tf32 is a GPU setting'):
        app.load_session(checkpoint, 'cpu', precision='tf32')


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
        x = from_uint8(np.array(center_crop_arr(original.convert('RGB'), model.img_size)))[None]
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
    grid, *_ = generate(client, session.classes[0], seed=0, count=1, schedule='1', cfg=0.0, cfg_start_step=0)
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


def test_the_app_reads_its_checkpoint_once_for_the_model_and_its_dataset(trained, monkeypatch):
    reads = []

    def counted(path, *args, **kwargs):
        reads.append(path)
        return read(path, *args, **kwargs)
    read = models.load.read_checkpoint
    monkeypatch.setattr(models.load, 'read_checkpoint', counted)
    monkeypatch.setattr(app, 'read_checkpoint', counted)
    session = app.load_session(str(trained / 'run' / 'checkpoint-last.pth'), 'cpu')
    assert len(reads) == 1 and session.data_root is not None and session.val


def test_without_a_checkpoint_the_page_says_which_command_makes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    page, session = app.page_for(app.parse_args([]))
    assert session is None
    assert app.DEMO_COMMAND in capsys.readouterr().err
    assert any(app.DEMO_COMMAND in str(getattr(block, 'value', '')) for block in page.blocks.values())
    with pytest.raises(SystemExit) as e:
        app.main(['--checkpoint', str(tmp_path / 'missing.pth')])
    assert e.value.code == 2 and 'missing.pth: no such file' in capsys.readouterr().err
