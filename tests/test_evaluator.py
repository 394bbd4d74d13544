"""ADM evaluation suite: metric math against float64 references with known answers, the torch backend's
feature plumbing (random weights, no download), and the evaluator CLI end to end with a fake Inception."""
import json
import os
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

import evaluator
from util import adm_metrics, inception_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def sqrt_psd(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ---------------------------------------------------------------- Frechet distance (FID, sFID)

def test_frechet_diagonal_gaussians_analytic():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, size=5), rng.uniform(0.5, 2, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert adm_metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_scaled_covariance_analytic():
    rng = np.random.default_rng(1)
    sigma, c = random_spd(rng, 8), 1.7
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma)
    assert adm_metrics.frechet_distance(mu1, sigma, mu2, c ** 2 * sigma) == pytest.approx(expected, rel=1e-9)
    assert adm_metrics.frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0, abs=1e-9)


def test_frechet_general_matches_symmetric_formula():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    r1 = sqrt_psd(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrt_psd(r1 @ s2 @ r1))
    assert adm_metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings('ignore::scipy.linalg.LinAlgWarning')
def test_frechet_singular_product_adds_eps_like_adm():
    # sqrtm([[0, 1], [0, 0]]) is not finite; with eps on both diagonals the product is (1 + eps) [[eps, 1], [0, eps]],
    # whose square root has trace 2 sqrt(eps (1 + eps)).
    eps = 1e-6
    with pytest.warns(UserWarning, match='singular'):
        fd = adm_metrics.frechet_distance(np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.ones(2), np.eye(2), eps)
    assert fd == pytest.approx(2 + 0 + 2 - 4 * np.sqrt(eps * (1 + eps)), rel=1e-9)


def test_frechet_rejects_imaginary_square_root():
    with pytest.raises(ValueError, match='imaginary'):
        adm_metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))


def test_gaussian_stats_match_float64_reference():
    acts = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = adm_metrics.gaussian_stats(acts)
    x = acts.astype(np.float64)
    ref_mu = x.sum(axis=0) / len(x)
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, (x - ref_mu).T @ (x - ref_mu) / (len(x) - 1), rtol=1e-10)


def test_sfid_spatial_vectors_and_stats():
    maps = np.random.default_rng(4).normal(size=(40, 17, 17, 192)).astype(np.float32)  # mixed_6/conv, NHWC
    vecs = adm_metrics.spatial_vectors(maps)
    assert vecs.shape == (40, 2023)
    n, y, x, c = 3, 5, 11, 6
    assert vecs[n, (y * 17 + x) * 7 + c] == maps[n, y, x, c]
    np.testing.assert_array_equal(vecs, np.stack([maps[i, :, :, :7].ravel() for i in range(40)]))
    mu, sigma = adm_metrics.gaussian_stats(vecs)
    ref = vecs.astype(np.float64)
    np.testing.assert_allclose(mu, ref.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- Inception Score

def log_probs(probs):
    """Logits whose softmax is exactly probs (-inf for zero probability)."""
    with np.errstate(divide='ignore'):
        return np.log(probs)


def test_inception_score_one_hot_is_number_of_classes():
    labels = np.tile(np.arange(5), 4)  # every split of 10 holds each of the 5 classes twice
    assert adm_metrics.inception_score(log_probs(np.eye(5)[labels]), split_size=10) == pytest.approx(5, rel=1e-12)


def test_inception_score_uniform_is_one():
    assert adm_metrics.inception_score(np.zeros((30, 7)), split_size=10) == pytest.approx(1, rel=1e-12)


def test_inception_score_averages_adm_splits():
    # splits of 2: [class 0, class 1] scores 2, [class 0, class 0] scores 1
    one_hot = np.eye(2)[[0, 1, 0, 0]]
    assert adm_metrics.inception_score(log_probs(one_hot), split_size=2) == pytest.approx(1.5, rel=1e-12)


def test_inception_score_matches_float64_reference_with_short_last_split():
    logits = np.random.default_rng(5).normal(size=(12, 9)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = []
    for part in (probs[0:5], probs[5:10], probs[10:12]):  # ADM: consecutive splits, the last one shorter
        mean = part.mean(axis=0)
        scores.append(np.exp(np.mean([np.sum(p * np.log(p / mean)) for p in part])))
    assert adm_metrics.inception_score(logits, split_size=5) == pytest.approx(np.mean(scores), rel=1e-10)


# ---------------------------------------------------------------- precision / recall (k-NN manifolds, k = 3)

def test_manifold_radii_are_kth_neighbour_including_self():
    feats = np.random.default_rng(6).normal(size=(30, 4))
    expected = np.sort(cdist(feats, feats, 'sqeuclidean'), axis=1)[:, 3]
    np.testing.assert_allclose(adm_metrics.manifold_radii(feats, batch_size=7), expected, rtol=1e-5, atol=1e-5)


def test_precision_recall_identical_and_far_apart():
    feats = np.random.default_rng(7).normal(size=(25, 8))
    assert adm_metrics.precision_recall(feats, feats) == (1.0, 1.0)
    assert adm_metrics.precision_recall(feats, feats + 1000) == (0.0, 0.0)


def test_precision_recall_hand_checked_1d():
    # reference 0..3: k=3 radii 3, 2, 2, 3 -> balls [-3,3] [-1,3] [0,4] [0,6]; samples 4 and 5 lie inside -> 2/5.
    # samples 4, 5, 6.5, 7, 100: radii 3, 2, 2.5, 3, 95 -> balls [1,7] [3,7] [4,9] [4,10] [5,195] hold 1, 2, 3 -> 3/4.
    ref = np.array([[0.0], [1.0], [2.0], [3.0]])
    sample = np.array([[4.0], [5.0], [6.5], [7.0], [100.0]])
    assert adm_metrics.precision_recall(ref, sample) == (0.4, 0.75)


def test_precision_recall_matches_float64_brute_force_in_any_batching():
    rng = np.random.default_rng(8)
    ref, sample = rng.normal(size=(40, 16)), rng.normal(size=(33, 16)) + 0.5
    k = 3
    ref_r = np.sort(cdist(ref, ref, 'sqeuclidean'), axis=1)[:, k]
    sample_r = np.sort(cdist(sample, sample, 'sqeuclidean'), axis=1)[:, k]
    d = cdist(ref, sample, 'sqeuclidean')  # (ref, sample)
    expected = (d <= ref_r[:, None]).any(axis=0).mean(), (d <= sample_r[None, :]).any(axis=1).mean()
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert adm_metrics.precision_recall(ref, sample, batch_size=1000) == pytest.approx(expected)
    assert adm_metrics.precision_recall(ref, sample, batch_size=7) == pytest.approx(expected)


# ---------------------------------------------------------------- backends without weights or network

@pytest.fixture
def random_weight_inception(monkeypatch, tmp_path):
    """TorchInception on torch-fidelity's architecture with its random init (no weights file is read)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    monkeypatch.setattr(FeatureExtractorInceptionV3, 'load_state_dict', lambda self, state_dict: None)
    torch.manual_seed(0)
    torch.save({}, tmp_path / 'weights.pth')
    return inception_features.TorchInception(str(tmp_path / 'weights.pth'))


def test_torch_backend_features_come_from_pool_fc_and_mixed_6d(random_weight_inception):
    net = random_weight_inception.net
    captured = []
    net.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: captured.append(output))
    images = np.random.default_rng(9).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    feats = random_weight_inception(images)
    assert feats['pool'].shape == (2, 2048) and feats['logits'].shape == (2, 1008)
    spatial_NCHW = captured[0].cpu()  # (2, 192, 17, 17)
    np.testing.assert_array_equal(feats['spatial'], spatial_NCHW[:, :7].permute(0, 2, 3, 1).reshape(2, 2023).numpy())
    np.testing.assert_allclose(feats['logits'], feats['pool'] @ net.fc.weight.T.cpu().numpy(), rtol=1e-4, atol=1e-4)


def test_torch_backend_offline_is_one_clear_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(tfi, 'load_state_dict_from_url', offline)
    with pytest.raises(inception_features.InputError, match='--inception_weights'):
        inception_features.TorchInception()


def test_graph_download_offline_is_one_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(inception_features.urllib.request, 'urlopen', offline)
    with pytest.raises(inception_features.InputError) as err:
        inception_features.download(inception_features.INCEPTION_GRAPH_URL, str(tmp_path / 'g.pb'), '--inception_graph')
    message = str(err.value)
    assert 'classify_image_graph_def.pb' in message and '--inception_graph' in message and '\n' not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


# ---------------------------------------------------------------- evaluator CLI with a fake Inception

class FakeInception:
    """Deterministic features of the pixels: 6-d 'pool', 5-d 'spatial', 4 logits; counts the images it saw."""
    images_seen = 0

    def __init__(self, weights_path):
        assert weights_path is None

    def __call__(self, images):
        FakeInception.images_seen += len(images)
        x = images.reshape(len(images), -1).astype(np.float32) / 255
        feats = x @ np.random.default_rng(0).normal(size=(x.shape[1], 15)).astype(np.float32)  # (B, 15)
        return {'pool': feats[:, :6], 'spatial': feats[:, 6:11], 'logits': feats[:, 11:]}


@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.setitem(inception_features.BACKENDS, 'fake', FakeInception)
    FakeInception.images_seen = 0


def images(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def run_cli(*argv):
    evaluator.main([str(a) for a in argv] + ['--backend', 'fake'])


def expected_results(ref_images, sample_images, stats=None):
    ref, sample = FakeInception(None)(ref_images), FakeInception(None)(sample_images)
    if stats is None:
        stats = dict(zip(evaluator.STATS_NAMES, (*adm_metrics.gaussian_stats(ref['pool']),
                                                 *adm_metrics.gaussian_stats(ref['spatial']))))
    return evaluator.evaluate({'pool': ref['pool'], **stats}, sample)


def test_cli_end_to_end_json_and_reference_cache(fake_backend, tmp_path, capsys):
    ref_images, sample_images = images(20, 1), images(16, 2)
    np.savez(tmp_path / 'ref.npz', arr_0=ref_images)
    np.savez(tmp_path / 'samples.npz', arr_0=sample_images)
    run_cli(tmp_path / 'ref.npz', tmp_path / 'samples.npz', '--output_file', tmp_path / 'out.json')
    assert (tmp_path / 'ref.fake.stats.npz').is_file() and FakeInception.images_seen == 36
    run_cli(tmp_path / 'ref.npz', tmp_path / 'samples.npz', '--output_file', tmp_path / 'again.json')
    assert FakeInception.images_seen == 36 + 16  # the reference came from its cache

    results = json.loads((tmp_path / 'out.json').read_text())
    expected = expected_results(ref_images, sample_images)
    assert {k: results[k] for k in expected} == pytest.approx(expected)
    assert results['num_samples'] == 16 and results['backend'] == 'fake'
    out = capsys.readouterr().out
    assert f"FID: {results['fid']}" in out and f"Inception Score: {results['inception_score']}" in out
    assert json.loads((tmp_path / 'again.json').read_text()) == results


def test_cli_uses_precomputed_reference_stats_and_image_folders(fake_backend, tmp_path):
    rng = np.random.default_rng(3)
    ref_images, sample_images = images(12, 4), images(10, 5)
    stats = {'mu': rng.normal(size=6), 'sigma': random_spd(rng, 6), 'mu_s': rng.normal(size=5),
             'sigma_s': random_spd(rng, 5)}
    np.savez(tmp_path / 'ref.npz', arr_0=ref_images, **stats)
    (tmp_path / 'samples').mkdir()
    for i, img in enumerate(sample_images):
        Image.fromarray(img).save(tmp_path / 'samples' / f'{i:05d}.png')
    run_cli(tmp_path / 'ref.npz', tmp_path / 'samples', '--output_file', tmp_path / 'out.json')
    results = json.loads((tmp_path / 'out.json').read_text())
    expected = expected_results(ref_images, sample_images, stats)
    assert {k: results[k] for k in expected} == pytest.approx(expected)


def test_cli_reference_only_prepares_cache(fake_backend, tmp_path):
    np.savez(tmp_path / 'ref.npz', arr_0=images(8, 6))
    run_cli(tmp_path / 'ref.npz')
    assert (tmp_path / 'ref.fake.stats.npz').is_file()


def write_bad_inputs(case, d):
    """Files for one bad-input case; returns the CLI arguments (before --backend fake)."""
    good = images(8, 7)
    np.savez(d / 'ref.npz', arr_0=good)
    np.savez(d / 'samples.npz', arr_0=good)
    ref, sample, extra = d / 'ref.npz', d / 'samples.npz', []
    bad = d / 'bad.npz'
    if case == 'missing reference':
        ref = d / 'nope.npz'
    elif case == 'missing samples':
        sample = d / 'nope.npz'
    elif case == 'wrong array name':
        np.savez(bad, images=good)
    elif case == 'wrong shape':
        np.savez(bad, arr_0=good[..., 0])
    elif case == 'four channels':
        np.savez(bad, arr_0=np.concatenate([good, good[..., :1]], axis=-1))
    elif case == 'wrong dtype':
        np.savez(bad, arr_0=good.astype(np.float32) / 255)
    elif case == 'too few samples':
        np.savez(bad, arr_0=good[:3])
    elif case == 'not an npz':
        bad.write_text('hello')
    elif case == 'empty folder':
        bad = d / 'empty'
        bad.mkdir()
    elif case == 'mixed image sizes':
        bad = d / 'mixed'
        bad.mkdir()
        for i, size in enumerate([8, 8, 8, 8, 9]):
            Image.fromarray(images(1, i, size)[0]).save(bad / f'{i}.png')
    elif case == 'unreadable image':
        bad = d / 'broken'
        bad.mkdir()
        for i in range(5):
            Image.fromarray(good[i]).save(bad / f'{i}.png')
        (bad / '5.png').write_bytes(b'not a png')
    elif case == 'incomplete reference stats':
        np.savez(d / 'ref.npz', arr_0=good, mu=np.zeros(6))
    elif case == 'reference stats of other dims':
        np.savez(d / 'ref.npz', arr_0=good, mu=np.zeros(2048), sigma=np.eye(2048), mu_s=np.zeros(5),
                 sigma_s=np.eye(5))
    elif case == 'missing output folder':
        extra = ['--output_file', d / 'no' / 'out.json']
    if bad.exists():
        sample = bad
    return [ref, sample, *extra]


def assert_one_error_line(err):
    """stderr ends with exactly one 'error: ...' line (earlier output can only be progress bars), no traceback."""
    lines = err.split('\n')
    assert lines[-1] == '' and lines[-2].startswith('error: '), err
    assert err.count('error: ') == 1 and 'Traceback' not in err, err


BAD_CASES = ['missing reference', 'missing samples', 'wrong array name', 'wrong shape', 'four channels', 'wrong dtype',
             'too few samples', 'not an npz', 'empty folder', 'mixed image sizes', 'unreadable image',
             'incomplete reference stats', 'reference stats of other dims', 'missing output folder']


@pytest.mark.parametrize('case', BAD_CASES)
def test_cli_bad_input_exits_2_with_one_line(case, fake_backend, tmp_path, capsys):
    argv = write_bad_inputs(case, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert str(tmp_path) in err.splitlines()[-1]


@pytest.mark.parametrize('flag', ['--inception_graph', '--inception_weights'])
def test_cli_missing_inception_file_exits_2(flag, tmp_path, capsys):
    np.savez(tmp_path / 'ref.npz', arr_0=images(8, 8))
    backend = 'tf' if flag == '--inception_graph' else 'torch'
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main([str(tmp_path / 'ref.npz'), '--backend', backend, flag, str(tmp_path / 'missing')])
    assert exit_info.value.code == 2
    assert_one_error_line(capsys.readouterr().err)


def test_cli_subprocess_bad_input_has_no_traceback(tmp_path):
    np.savez(tmp_path / 'ref.npz', arr_0=images(8, 9))
    proc = subprocess.run([sys.executable, 'evaluator.py', str(tmp_path / 'ref.npz'), str(tmp_path / 'missing.npz')],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith('error: sample batch not found') and proc.stderr.count('\n') == 1, proc.stderr
