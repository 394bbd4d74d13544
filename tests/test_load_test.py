"""tools/load_test.py's readings (the sampler's time from the app's own info lines, a process's CPU time) and
tools/gradio_cache_race.py."""
import os
import resource
import sys

import pytest

from app import BatchInfo
from tools.load_test import cpu_seconds, sampler_seconds


def test_sampler_seconds_reads_the_apps_info_lines_and_counts_each_batch_once():
    first, merged = BatchInfo(7, 1, 16, 0.125), BatchInfo(8, 2, 32, 0.5)
    infos = [f'16 image(s), 17 serial steps (schedule 4); {info.describe("cpu")}'
             for info in (first, merged, merged)]  # the two requests of batch 8 report the same batch
    assert sampler_seconds(infos) == (0.625, 2)
    assert sampler_seconds(['an error message', None]) == (None, 0)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc is Linux')
def test_cpu_seconds_of_a_process_follows_its_own_count():
    def own():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    before, own_before = cpu_seconds(os.getpid()), own()
    while own() - own_before < 0.4:  # busy for 0.4 s of CPU, in user code and (random bytes) in the kernel
        sum(range(10000))
        os.urandom(1 << 16)
    grown, own_grown = cpu_seconds(os.getpid()) - before, own() - own_before
    assert abs(grown - own_grown) < 0.05  # /proc counts in clock ticks (10 ms)
    assert cpu_seconds(2 ** 22 + 12345) is None  # no such process


def test_gradio_cache_race_serves_both_kinds_and_files_never_fail(capsys):
    pytest.importorskip('gradio_client')
    from tools import gradio_cache_race
    gradio_cache_race.main(['--rounds', '2', '--clients', '4'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == 'files: 0 of 8 requests failed'  # what the app relies on
    assert lines[-2].startswith('arrays: ') and ' of 8 requests failed' in lines[-2]


def test_load_test_drives_the_floor_page_fetches_every_image_and_counts_a_failed_request(tmp_path, capsys,
                                                                                           monkeypatch):
    pytest.importorskip('gradio_client')
    import httpx
    from tools import load_test
    fetched, get, fail_at = [], httpx.Client.get, []

    def counted(self, url, *a, **kw):
        if len(fetched) in fail_at:
            fail_at.clear()
            raise httpx.ReadError('a download cut short, on purpose')
        response = get(self, url, *a, **kw)
        fetched.append((url, len(response.content)))
        return response
    monkeypatch.setattr(httpx.Client, 'get', counted)
    args = load_test.parse_args(['--clients', '3', '--rounds', '1', '--solo', '2'])
    port = load_test.free_port()
    command = [sys.executable, '-m', 'tools.load_test', '--serve_floor', str(port), str(tmp_path)]
    with load_test.served(command, port, str(tmp_path / 'floor.log'), timeout=120) as (url, pid):
        load = load_test.Load(url, pid, args)
        failed = load_test.report('floor', load, args)
        lines, first = capsys.readouterr().out.splitlines(), list(fetched)
        fail_at.append(len(fetched) + 3 * 3)  # the first fetch of the round, after the solo requests
        failed_again = load_test.report('floor', load, args)
    again = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('floor: solo, 2 requests: latency p50 ')
    assert lines[1].startswith('floor: 3 clients at once, round 1: all done in ') and 'FAILED' not in lines[1]
    assert lines[2].startswith('floor: summary: solo p50 ') and lines[2].endswith('; 0 of 3 requests failed')
    assert failed == 0
    requests = (1 + 2) + 3  # solo, after one to warm up; the round
    assert len(first) == 3 * requests and all(size > 0 for _, size in first)  # grid, GIF, maps of each
    assert {url.rsplit('.', 1)[1] for url, _ in first} == {'png', 'gif'}
    assert 'round 1' in again[1] and '1 FAILED, the first with ReadError: a download cut short' in again[1]
    assert again[2].endswith('; 1 of 3 requests failed') and failed_again == 1
