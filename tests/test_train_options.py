"""Every option of main.TRAIN_OPTIONS reaches what it configures: four tiny runs set each option to a
non-default value, and CHECKS maps each option to a check of the Trainer, the files written, the log, the
checkpoint, or a spy on the function the option configures."""
import collections
import fractions
import inspect
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint

import main
from conftest import ROOT, write_tiny_run
from data.builtin import BUILTIN_DATASETS
from data.image_folder import ImageFolderDataset
from data.token_cache import TokenCacheDataset
from evaluation import sample_quality
from models.generator import CheckerboardGenerator
from train_ae_codebook import train as train_ae
from util import distributed
from util.batches import GlobalBatchSampler
from util.checkpoint import CheckpointError, load_checkpoint
from util.config import ConfigError
from util.schedule import OPTIMIZERS
from util.sharded_checkpoint import read_sharded
from util.sharding import is_sharded

AE_TRAIN_CONFIG = os.path.join(ROOT, 'train_ae_codebook', 'configs', 'demo.yaml')
AE_OUTPUT = 'autoenc'  # the tiny autoencoder's training folder, relative to the test folder
STEPS_PER_EPOCH = 5  # 40 training images (4 per class), batch 8
RUNS = ('full', 'stepped', 'resumed', 'sharded')


def run_args(folder):
    """The args of the runs, in order, over write_tiny_run's defaults (batch 8, lr 1e-3, 3 epochs, fp32, cpu,
    no loader workers, a log record every step)."""
    stepped = dict(lr=None, blr=0.0128, lr_schedule='step', lr_step_epochs=[1], lr_step_factor=0.5,
                   warmup_epochs=0.4, optimizer='sgd', max_steps=7, create_cache=True,
                   cache_dir=str(folder / 'cache'), output_dir=str(folder / 'stepped'))
    return {
        # through main.main: 3 epochs, evaluations at epochs 2 and 3, the showcase
        'full': dict(data_path='shapes32', builtin_root=str(folder / 'builtin'), num_workers=1, grad_accum_steps=2,
                     lr_schedule='cosine', min_lr=1e-4, warmup_epochs=0.0, weight_decay=0.05, clip_grad=0.5,
                     ema=0.5, seed=7, output_dir=str(folder / 'full'), save_every_steps=3, keep_every_epochs=2,
                     log_every=4, eval_freq=2, eval_num_samples=6, eval_batch_size=4, cfg=1.5, cfg_start_step=1,
                     eval_steps_per_scale=2, eval_temperature=0.8, inception_weights=str(folder / 'inception.pth'),
                     probe_epochs=1, probe_max_images=10, probe_image_size=16,
                     autoenc_train_config=str(folder / 'ae_train.yaml'), showcase_images=3),
        # 7 steps of the step schedule from images, writing the token cache
        'stepped': stepped,
        # one bf16 step from the token cache, resumed from a copy of stepped's checkpoint that needs unpickling
        'resumed': {**stepped, 'create_cache': False, 'use_cache': True, 'resume': str(folder / 'trusted'),
                    'unsafe_load': True, 'precision': 'bf16', 'compile': True, 'max_steps': 8,
                    'output_dir': str(folder / 'resumed')},
        # one epoch sharded (FSDP in a process group of one), recomputing each block in the backward pass, then
        # evaluated (on a whole copy of the sharded weights)
        'sharded': dict(fsdp=True, grad_checkpointing=True, epochs=1, eval_freq=1, eval_num_samples=4,
                        eval_batch_size=4, probe_epochs=1, probe_max_images=10, probe_image_size=16,
                        output_dir=str(folder / 'sharded')),
    }


class Calls:
    """The bound arguments of every call of each spied function, by function name and by run."""

    def __init__(self):
        self.run = None
        self.by_name = collections.defaultdict(lambda: collections.defaultdict(list))

    def __call__(self, name, run):
        return self.by_name[name][run]

    def spy(self, monkeypatch, owner, name, replacement=None):
        """Record the calls of owner.NAME, then call it (or replacement instead)."""
        real = getattr(owner, name)
        signature = inspect.signature(real)

        def wrapper(*args, **kwargs):
            self.by_name[name][self.run].append(signature.bind(*args, **kwargs).arguments)
            return (replacement or real)(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


class Runs:
    """What the runs left: their folder, args, spied calls, trainers, logs and last checkpoints."""

    def __init__(self, folder, calls):
        self.folder, self.calls = folder, calls

    def trainer(self, run):
        return self.calls('run', run)[0]['self']

    def args(self, run):
        return self.trainer(run).args

    def out(self, run):
        return self.args(run)['output_dir']

    def log(self, run):
        with open(os.path.join(self.out(run), 'log.jsonl')) as f:
            return [json.loads(line) for line in f]

    def train_records(self, run):
        return [r for r in self.log(run) if 'loss' in r]

    def lr(self, run):
        """{step: lr after it} of the log."""
        return {r['step']: r['lr'] for r in self.train_records(run)}

    def checkpoint(self, run):
        return load_checkpoint(os.path.join(self.out(run), 'checkpoint-last.pth'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The runs, with spies on the functions the options configure."""
    folder = tmp_path_factory.mktemp('options')
    calls = Calls()
    with pytest.MonkeyPatch.context() as mp:
        # the built-in shapes32 shrunk to the tiny dataset's size, so that data_path 'shapes32' generates quickly
        mp.setitem(BUILTIN_DATASETS, 'shapes32', {**BUILTIN_DATASETS['shapes32'], 'train_per_class': 4,
                                                  'val_per_class': 2})
        # the schema has only 'adamw': a second optimizer gives args.optimizer a non-default value
        mp.setitem(OPTIMIZERS, 'sgd', lambda groups, lr: torch.optim.SGD(groups, lr=lr))
        calls.spy(mp, main.Trainer, 'run')
        calls.spy(mp, CheckerboardGenerator, 'forward')
        # compiling takes minutes on a CPU (tests/test_train.py compares a compiled run with an eager one)
        calls.spy(mp, CheckerboardGenerator, 'compile_for_training', replacement=lambda model: None)
        calls.spy(mp, main, 'autocast')
        calls.spy(mp, main, 'save_checkpoint')
        calls.spy(mp, distributed, 'init_distributed')
        calls.spy(mp, torch.nn.utils, 'clip_grad_norm_')
        calls.spy(mp, torch.utils.checkpoint, 'checkpoint')
        calls.spy(mp, sample_quality, 'draw_samples')
        calls.spy(mp, sample_quality, 'train_probe')
        # torch-fidelity needs Inception weights from the network
        calls.spy(mp, sample_quality, 'fidelity_metrics', replacement=lambda *args, **kwargs: {})
        # training the demo autoencoder takes minutes: the spy leaves the tiny random one where training would
        (folder / 'ae_train.yaml').write_text(Path(AE_TRAIN_CONFIG).read_text().replace(
            'output_dir: outputs/demo/autoenc', f'output_dir: {folder / AE_OUTPUT}'))
        calls.spy(mp, train_ae, 'train', replacement=lambda config: pretend_trained(folder))
        for run, args in run_args(folder).items():
            if run == 'resumed':
                trusted = load_checkpoint(folder / 'stepped' / 'checkpoint-last.pth')
                trusted['note'] = fractions.Fraction(1, 3)  # not an allowed global of weights_only loading
                (folder / 'trusted').mkdir()
                torch.save(trusted, folder / 'trusted' / 'checkpoint-last.pth')
            write_tiny_run(folder, f'{run}.yaml', (4, 2), args=args)
            calls.run = run
            main.main(['--config', str(folder / f'{run}.yaml')])
    return Runs(folder, calls)


def expected_cosine_lr(step, runs):
    args = runs.args('full')
    total = args['epochs'] * STEPS_PER_EPOCH
    return args['min_lr'] + 0.5 * (args['lr'] - args['min_lr']) * (1 + math.cos(math.pi * step / total))


def stepped_base_lr(runs):
    return runs.args('stepped')['blr'] * runs.args('stepped')['batch_size'] / 256


# ---- the checks, one per option ------------------------------------------------------------------------------

def check_data_path(runs):
    """The stepped run trains on the tiny folder it names."""
    trainer = runs.trainer('stepped')
    assert trainer.data_root == str(runs.folder / 'shapes') and len(trainer.dataset) == 40


def check_builtin_root(runs):
    """The full run's built-in dataset name is generated under builtin_root."""
    root = os.path.join(runs.args('full')['builtin_root'], 'shapes32')
    assert runs.trainer('full').data_root == root and os.path.isfile(os.path.join(root, 'manifest.json'))


def check_num_workers(runs):
    """The full run's DataLoader has one worker process."""
    assert runs.trainer('full').loader.num_workers == 1


def check_create_cache(runs):
    """The stepped run writes a complete token cache while it trains from images."""
    with open(os.path.join(runs.args('stepped')['cache_dir'], 'manifest.json')) as f:
        assert json.load(f)['complete']
    assert isinstance(runs.trainer('stepped').dataset, ImageFolderDataset)


def check_use_cache(runs):
    """The resumed run trains from the token cache."""
    assert isinstance(runs.trainer('resumed').dataset, TokenCacheDataset)


def check_cache_dir(runs):
    """The cache is written and read in cache_dir, not in output_dir/token_cache."""
    assert runs.trainer('resumed').dataset.cache_dir == runs.args('resumed')['cache_dir']
    assert not os.path.exists(os.path.join(runs.out('stepped'), 'token_cache'))


def check_batch_size(runs):
    """Each of the stepped run's 7 steps is one forward of 8 rows."""
    assert [len(call['labels']) for call in runs.calls('forward', 'stepped')] == [8] * 7


def check_grad_accum_steps(runs):
    """Each of the full run's 15 steps is two forwards of 4 rows."""
    assert [len(call['labels']) for call in runs.calls('forward', 'full')] == [4] * 2 * 15


def check_epochs(runs):
    """The full run stops after 3 epochs of 5 steps."""
    checkpoint = runs.checkpoint('full')
    assert (checkpoint['epoch'], checkpoint['step']) == (3, 15)


def check_max_steps(runs):
    """The stepped run stops at step 7, inside epoch 2."""
    checkpoint = runs.checkpoint('stepped')
    assert (checkpoint['epoch'], checkpoint['step']) == (1, 7)
    assert runs.train_records('stepped')[-1]['step'] == 7


def check_lr(runs):
    """The full run's optimizer starts from lr 1e-3."""
    assert runs.trainer('full').optimizer.param_groups[0]['initial_lr'] == runs.args('full')['lr']


def check_blr(runs):
    """The stepped run (no lr) gets blr * batch / 256, logged after warmup."""
    assert runs.trainer('stepped').optimizer.param_groups[0]['initial_lr'] == pytest.approx(stepped_base_lr(runs))
    assert runs.lr('stepped')[2] == pytest.approx(stepped_base_lr(runs))


def check_min_lr(runs):
    """The full run's cosine ends at min_lr."""
    assert runs.lr('full')[15] == pytest.approx(runs.args('full')['min_lr'])


def check_lr_schedule(runs):
    """The full run's logged lr follows the cosine from lr to min_lr over 15 steps."""
    lrs = runs.lr('full')
    assert lrs == pytest.approx({step: expected_cosine_lr(step, runs) for step in lrs})


def check_lr_step_epochs(runs):
    """Epoch 1 is the step schedule's milestone 5: lr is lowered between the logs of steps 3 and 5 (timm applies a
    milestone m from step index m - 1, so the lr logged after step 4 is lowered already)."""
    assert runs.trainer('stepped').scheduler.decay_t == [STEPS_PER_EPOCH]
    lrs = runs.lr('stepped')
    assert lrs[3] == pytest.approx(stepped_base_lr(runs)) and lrs[5] < lrs[3]


def check_lr_step_factor(runs):
    """The milestone multiplies lr by 0.5."""
    lrs = runs.lr('stepped')
    assert lrs[5] / lrs[3] == pytest.approx(runs.args('stepped')['lr_step_factor'])


def check_warmup_epochs(runs):
    """0.4 epochs = 2 steps of linear warmup: lr/2 after step 1, lr after step 2."""
    lrs = runs.lr('stepped')
    assert (lrs[1], lrs[2]) == pytest.approx((stepped_base_lr(runs) / 2, stepped_base_lr(runs)))


def check_optimizer(runs):
    """'sgd' (registered by the fixture) builds SGD; the default builds AdamW (betas 0.9, 0.95); an unknown
    name is refused."""
    assert type(runs.trainer('stepped').optimizer) is torch.optim.SGD
    adamw = runs.trainer('full').optimizer
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]['betas'] == (0.9, 0.95)
    with pytest.raises(ConfigError, match='args.optimizer must be one of'):
        main.check_args({**runs.args('full'), 'optimizer': 'no-such-optimizer'})


def check_weight_decay(runs):
    """The full run's AdamW decays the matrices by 0.05 and not the 1-D parameters."""
    groups = runs.trainer('full').optimizer.param_groups
    assert sorted(group['weight_decay'] for group in groups) == [0.0, runs.args('full')['weight_decay']]


def check_clip_grad(runs):
    """The full run clips every step at 0.5; an unset clip_grad clips at infinity."""
    assert [call['max_norm'] for call in runs.calls('clip_grad_norm_', 'full')] == [0.5] * 15
    assert {call['max_norm'] for call in runs.calls('clip_grad_norm_', 'stepped')} == {math.inf}


def check_ema(runs):
    """The full run's checkpoint holds EMA weights (decay 0.5) that differ from the model's; stepped has none."""
    assert runs.trainer('full').ema.decay == runs.args('full')['ema']
    checkpoint = runs.checkpoint('full')
    assert any(not torch.equal(checkpoint['model'][k], v) for k, v in checkpoint['model_ema'].items())
    assert runs.checkpoint('stepped')['model_ema'] is None


def check_precision(runs):
    """fp32 and bf16 reach the trainer, the training autocast and the sampling settings."""
    for run, precision in (('full', 'fp32'), ('resumed', 'bf16')):
        assert runs.trainer(run).precision == precision
        assert {call['precision'] for call in runs.calls('autocast', run)} == {precision}
        assert runs.trainer(run).sample_settings.precision == precision


def check_seed(runs):
    """The full run's first micro-batch is the one seed 7 draws."""
    first = next(iter(GlobalBatchSampler(40, 8, seed=runs.args('full')['seed'])))[:4]
    targets = runs.trainer('full').dataset.targets
    assert runs.calls('forward', 'full')[0]['labels'].tolist() == [targets[i] for i in first]


def check_device(runs):
    """'cpu' reaches init_distributed, and the model trains there."""
    assert runs.calls('init_distributed', 'full')[0]['device'] == 'cpu'
    assert runs.trainer('full').device == torch.device('cpu')


def check_compile(runs):
    """The resumed run compiles the model for training; the others do not."""
    assert len(runs.calls('compile_for_training', 'resumed')) == 1
    assert runs.calls('compile_for_training', 'full') == runs.calls('compile_for_training', 'stepped') == []


def check_fsdp(runs):
    """The sharded run's weights are sharded, its checkpoint is a sharded folder holding its epoch, and it was
    evaluated; the others train whole weights."""
    assert is_sharded(runs.trainer('sharded').model)
    assert read_sharded(os.path.join(runs.out('sharded'), 'checkpoint-last.dcp'))['step'] == STEPS_PER_EPOCH
    assert any(sample_quality.EVAL_PREFIX + 'class_consistency' in r for r in runs.log('sharded'))
    assert not any(is_sharded(runs.trainer(run).model) for run in ('full', 'stepped', 'resumed'))


def check_grad_checkpointing(runs):
    """The sharded run recomputes each of the 2 blocks in each of its steps; the others keep activations."""
    assert len(runs.calls('checkpoint', 'sharded')) == 2 * STEPS_PER_EPOCH
    assert all(runs.calls('checkpoint', run) == [] for run in ('full', 'stepped', 'resumed'))


def check_output_dir(runs):
    """The full run writes its checkpoint, config and log into output_dir."""
    for name in ('checkpoint-last.pth', 'config.yaml', 'log.jsonl'):
        assert os.path.isfile(os.path.join(runs.folder, 'full', name)), name


def check_resume(runs):
    """The resumed run continues from the trusted copy of stepped's step 7 into a fresh output_dir."""
    assert [r['step'] for r in runs.train_records('resumed')] == [8]
    assert runs.checkpoint('resumed')['step'] == 8


def check_save_every_steps(runs):
    """checkpoint-last.pth is saved every 3 steps, besides at each epoch end (5, 10, 15)."""
    saved = {call['obj']['step'] for call in runs.calls('save_checkpoint', 'full')
             if call['path'].endswith('checkpoint-last.pth')}
    assert saved == {3, 5, 6, 9, 10, 12, 15}


def check_keep_every_epochs(runs):
    """Of 3 epochs, only epoch 2's checkpoint is kept."""
    assert sorted(p for p in os.listdir(runs.out('full')) if p.startswith('checkpoint-0')) == ['checkpoint-0002.pth']


def check_log_every(runs):
    """The full run logs every 4 steps and at each epoch end."""
    assert [r['step'] for r in runs.train_records('full')] == [4, 5, 8, 10, 12, 15]


def check_unsafe_load(runs):
    """The resumed run's checkpoint to resume from loads with unsafe_load and is refused without it."""
    config = runs.trainer('resumed').config
    with pytest.warns(UserWarning, match='weights_only=False'):
        assert main.read_resume(config)[1]['note'] == fractions.Fraction(1, 3)
    with pytest.raises(CheckpointError, match='refusing to unpickle fractions.Fraction'):
        main.read_resume({**config, 'args': {**config['args'], 'unsafe_load': False}})


def check_eval_freq(runs):
    """Evaluations at epoch 2 (every 2) and 3 (the end), none at epoch 1."""
    assert [r['epoch'] for r in runs.log('full') if 'eval/class_consistency' in r] == [2, 3]
    assert sorted(p for p in os.listdir(runs.out('full')) if p.startswith('eval_')) == ['eval_epoch0002',
                                                                                        'eval_epoch0003']


def check_eval_num_samples(runs):
    """6 samples drawn and written per evaluation."""
    assert [call['num_samples'] for call in runs.calls('draw_samples', 'full')] == [6, 6]
    assert len(os.listdir(os.path.join(runs.out('full'), 'eval_epoch0003', 'samples'))) == 6


def check_eval_batch_size(runs):
    """Samples are drawn 4 at a time."""
    assert [call['batch_size'] for call in runs.calls('draw_samples', 'full')] == [4, 4]


def sampling_check(option, setting):
    """A check that the evaluation samples with SampleSettings.SETTING = args.OPTION."""
    def check(runs):
        for call in runs.calls('draw_samples', 'full'):
            assert getattr(call['settings'], setting) == runs.args('full')[option]
    check.__doc__ = f'The evaluation samples with SampleSettings.{setting} = args.{option}.'
    return check


def check_inception_weights(runs):
    """The path goes to the FID / IS computation."""
    assert [call['inception_weights'] for call in runs.calls('fidelity_metrics', 'full')] == \
        [runs.args('full')['inception_weights']] * 2


def check_probe_epochs(runs):
    """The class probe trains for 1 epoch."""
    assert {call['fit_settings']['epochs'] for call in runs.calls('train_probe', 'full')} == {1}


def check_probe_max_images(runs):
    """The class probe sees at most 10 images per split."""
    assert {call['max_images'] for call in runs.calls('train_probe', 'full')} == {10}


def check_probe_image_size(runs):
    """The class probe sees 16-pixel images (the model's are 32)."""
    assert {call['image_size'] for call in runs.calls('train_probe', 'full')} == {16}


def pretend_trained(folder):
    """What a finished autoencoder training leaves in its output_dir: the tiny random autoencoder."""
    (folder / AE_OUTPUT).mkdir(exist_ok=True)
    shutil.copy(folder / 'ae.pth', folder / AE_OUTPUT / 'checkpoint-last.pth')
    shutil.copy(folder / 'ae.yaml', folder / AE_OUTPUT / 'autoencoder_config.yaml')


def check_autoenc_train_config(runs):
    """The autoencoder trainer gets that file's config, with the run's seed, and the run uses what it trained."""
    (call,) = runs.calls('train', 'full')
    args = call['config']['args']
    assert (args['config'], args['output_dir'], args['seed']) == (str(runs.folder / 'ae_train.yaml'),
                                                                  str(runs.folder / AE_OUTPUT), 7)
    autoenc = runs.checkpoint('full')['config']['model']['autoenc']
    assert autoenc['checkpoint_path'] == str(runs.folder / AE_OUTPUT / 'checkpoint-last.pth')


def check_showcase_images(runs):
    """3 showcase samples, each with its maps figure, and the GIF."""
    files = set(os.listdir(os.path.join(runs.out('full'), 'samples')))
    assert {f'sample_{i:04d}{end}' for i in range(3) for end in ('.png', '_maps.png')} < files
    assert 'sample_0003.png' not in files and 'sample_0000_forming.gif' in files


CHECKS = {
    'data_path': check_data_path,
    'builtin_root': check_builtin_root,
    'num_workers': check_num_workers,
    'create_cache': check_create_cache,
    'use_cache': check_use_cache,
    'cache_dir': check_cache_dir,
    'batch_size': check_batch_size,
    'grad_accum_steps': check_grad_accum_steps,
    'epochs': check_epochs,
    'max_steps': check_max_steps,
    'lr': check_lr,
    'blr': check_blr,
    'min_lr': check_min_lr,
    'lr_schedule': check_lr_schedule,
    'lr_step_epochs': check_lr_step_epochs,
    'lr_step_factor': check_lr_step_factor,
    'warmup_epochs': check_warmup_epochs,
    'optimizer': check_optimizer,
    'weight_decay': check_weight_decay,
    'clip_grad': check_clip_grad,
    'ema': check_ema,
    'precision': check_precision,
    'seed': check_seed,
    'device': check_device,
    'compile': check_compile,
    'fsdp': check_fsdp,
    'grad_checkpointing': check_grad_checkpointing,
    'output_dir': check_output_dir,
    'resume': check_resume,
    'save_every_steps': check_save_every_steps,
    'keep_every_epochs': check_keep_every_epochs,
    'log_every': check_log_every,
    'unsafe_load': check_unsafe_load,
    'eval_freq': check_eval_freq,
    'eval_num_samples': check_eval_num_samples,
    'eval_batch_size': check_eval_batch_size,
    'cfg': sampling_check('cfg', 'cfg'),
    'cfg_start_step': sampling_check('cfg_start_step', 'cfg_start_step'),
    'eval_steps_per_scale': sampling_check('eval_steps_per_scale', 'steps_per_scale'),
    'eval_temperature': sampling_check('eval_temperature', 'temperature'),
    'inception_weights': check_inception_weights,
    'probe_epochs': check_probe_epochs,
    'probe_max_images': check_probe_max_images,
    'probe_image_size': check_probe_image_size,
    'autoenc_train_config': check_autoenc_train_config,
    'showcase_images': check_showcase_images,
}


def test_every_option_has_a_check():
    assert set(CHECKS) == set(main.TRAIN_OPTIONS)


def test_every_option_is_set_to_a_non_default_value(runs):
    for option, schema in main.TRAIN_OPTIONS.items():
        assert any(runs.args(run)[option] != schema.default for run in RUNS), option


@pytest.mark.parametrize('option', sorted(CHECKS))
def test_option_reaches_its_target(runs, option):
    CHECKS[option](runs)
