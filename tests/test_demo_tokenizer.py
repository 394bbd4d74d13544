"""The shipped demo tokenizer (pretrained_models/demo_autoencoder/): its sha256 is the one configs/demo.yaml
checks, its architecture is train_ae_codebook/configs/demo.yaml's, it codes the built-in validation images above
floors, and a corrupted or other file in its place is one line, exit 2, nothing written."""
import os
import shutil

import pytest
import torch
import yaml

import main as train_main
from data.builtin import ensure_builtin_dataset
from data.image_folder import ImageFolderDataset
from models.autoencoder import load_autoencoder
from models.autoencoder_config import AutoencoderConfig
from models.checkerboard import scale_sizes
from train_ae_codebook.metrics import evaluate_pyramid
from util.provenance import file_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, 'pretrained_models', 'demo_autoencoder')
DEMO = os.path.join(ROOT, 'configs', 'demo.yaml')
# measured 2026-12-02 on the 1,000 val images: 20.5 dB at 4x4, 0.66 of the codes used at every scale together
PSNR_FLOOR_DB, USAGE_FLOOR = 19.5, 0.55


def demo_model_section():
    with open(DEMO) as f:
        return yaml.safe_load(f)['model']


def test_the_shipped_file_is_the_one_the_demo_checks_and_of_the_demo_architecture():
    autoenc = demo_model_section()['autoenc']
    assert os.path.join(ROOT, autoenc['checkpoint_path']) == os.path.join(SHIPPED, 'checkpoint.pth')
    assert file_sha256(os.path.join(SHIPPED, 'checkpoint.pth')) == autoenc['sha256']
    with open(os.path.join(ROOT, 'train_ae_codebook', 'configs', 'demo.yaml')) as f:
        trained = AutoencoderConfig.from_published(yaml.safe_load(f), 'train_ae_codebook/configs/demo.yaml')
    with open(os.path.join(SHIPPED, 'autoencoder_config.yaml')) as f:
        assert AutoencoderConfig.from_published(yaml.safe_load(f), 'shipped') == trained
    assert set(torch.load(os.path.join(SHIPPED, 'checkpoint.pth'), weights_only=True)) == {'state_dict'}


def test_the_shipped_tokenizer_codes_the_validation_images_above_the_floors(tmp_path):
    root = ensure_builtin_dataset(str(tmp_path / 'shapes16-simple'), 'shapes16-simple')
    autoencoder = load_autoencoder(os.path.join(SHIPPED, 'autoencoder_config.yaml'),
                                   os.path.join(SHIPPED, 'checkpoint.pth'))
    val = ImageFolderDataset(root, 16, 'val')
    batches = (torch.stack([val[i][0] for i in range(start, min(start + 250, len(val)))])
               for start in range(0, len(val), 250))
    sides = scale_sizes(16, autoencoder.stride, 2)
    with torch.no_grad():
        metrics = evaluate_pyramid(autoencoder, batches, sides)
    assert metrics[max(sides)]['psnr'] >= PSNR_FLOOR_DB and metrics['all']['usage'] >= USAGE_FLOOR, metrics


@pytest.mark.parametrize('damage', ['corrupted', 'another file'])
def test_a_damaged_tokenizer_is_one_line_and_nothing_written(tmp_path, capsys, damage):
    shutil.copytree(SHIPPED, tmp_path / 'tokenizer')
    weights = tmp_path / 'tokenizer' / 'checkpoint.pth'
    if damage == 'corrupted':
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        state = torch.load(weights, weights_only=True)
        state['state_dict']['quant_conv.bias'] += 1
        torch.save(state, weights)
    out = tmp_path / 'out'
    quick = ['--max_steps', '1', '--create_cache', 'false', '--use_cache', 'false', '--eval_freq', '0',
             '--showcase_images', '0']  # were the check gone, the run would end at once and the test fail
    with pytest.raises(SystemExit) as e:
        train_main.main(['--config', DEMO, '--output_dir', str(out), '--builtin_root', str(tmp_path / 'builtin'), *quick,
                         '--model.autoenc.checkpoint_path', str(weights),
                         '--model.autoenc.config_path', str(tmp_path / 'tokenizer' / 'autoencoder_config.yaml')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert f'{weights} has sha256' in err[0] and 'model.autoenc.sha256 expects 63c1593110b4275a' in err[0]
    assert not out.exists() and not (tmp_path / 'builtin').exists()
