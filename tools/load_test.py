"""Load test of the browser app: launch app.py on a checkpoint, send Generate requests through gradio_client,
one at a time and then from N clients at once, and print latency (p50 / p95), throughput and the sampler's own
time (from the page's info line). A request is done when its three images are fetched too, into memory over a
kept-alive connection as a browser fetches them (gradio_client's own downloads, which write each file to disk,
took 2.3x the clients' CPU). Prints figures, and a summary line per server against the serving bounds; writes
nothing outside a temporary folder; exit status 1 when a request failed.

    python -m tools.load_test --checkpoint outputs/demo/checkpoint-last.pth --clients 16 --images 16
    python -m tools.load_test --checkpoint ... --floor     # the same load against a page that does no work
    python -m tools.load_test --checkpoint ... --model_alone   # and the model's own work for a round, alone

--floor also serves, in its own process, a page with the app's Generate outputs that returns a fixed answer of
the same sizes at once: what Gradio and the clients cost by themselves on this machine. The clients run in this
process, on the same CPU as the server; the CPU time of each side in a round is printed (the server's where /proc
gives it).
"""
import argparse
import concurrent.futures
import contextlib
import os
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = re.compile(r'sampled and decoded in ([\d.]+) s .* in batch (\d+) with (\d+) other request\(s\), (\d+) images')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(command, port, log_path, timeout):
    """Run command (a server on port) with its output in log_path, for the with block: yields (url, pid) once a
    client connects, and stops the server at the end. SystemExit with the log's end when it exits or does not
    answer in time."""
    from gradio_client import Client
    env = {**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False'}
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, start = f'http://127.0.0.1:{port}/', time.time()
    try:
        while time.time() - start < timeout and process.poll() is None:
            try:
                Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 (not up yet)
                time.sleep(0.5)
        else:
            with open(log_path) as log:
                tail = log.read()[-2000:]
            why = (f'exited with code {process.returncode}' if process.poll() is not None else
                   f'did not answer in {timeout} s')
            raise SystemExit(f'error: the server {why} ({" ".join(command)}):\n{tail}')
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid):
    """User + system CPU seconds that process pid has used so far (from /proc), or None where there is no /proc."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime: fields 14, 15


def percentile(values, q):
    return float(np.percentile(values, q))


class Load:
    """Generate requests against url (served by process server_pid) with fixed settings; request i has seed i."""

    def __init__(self, url, server_pid, args):
        from gradio_client import Client
        self.url, self.server_pid, self.args, self.Client = url, server_pid, args, Client
        endpoint = Client(url, verbose=False).view_api(return_format='dict', print_info=False)['named_endpoints']
        classes = endpoint['/generate']['parameters'][0]['type'].get('enum') or [None]
        self.label = args.label or classes[0]
        self.seeds = iter(range(10 ** 6))

    @contextlib.contextmanager
    def visitors(self, count):
        """count users of the page for the with block: each a (gradio_client Client, httpx Client) pair."""
        import httpx
        with contextlib.ExitStack() as stack:
            yield [(self.Client(self.url, verbose=False, download_files=False), stack.enter_context(httpx.Client()))
                   for _ in range(count)]

    def request(self, visitor):
        """(latency s, info line) of one request, its images fetched."""
        a, (client, http) = self.args, visitor
        start = time.perf_counter()
        *files, info = client.predict(label=self.label, schedule=a.schedule, cfg=a.cfg,
                                      cfg_start_step=a.cfg_start_step, temperature=1.0, top_k=0, top_p=1.0,
                                      seed=next(self.seeds), num_images=a.images, shown=0, api_name='/generate')
        for file in files:
            http.get(file['url']).raise_for_status()
        return time.perf_counter() - start, info

    def solo(self, count):
        """[(latency, info)] of count requests, one after another (after one to warm up)."""
        with self.visitors(1) as (visitor,):
            self.request(visitor)
            return [self.request(visitor) for _ in range(count)]

    def concurrent(self, count):
        """(wall s, [(latency, info)], client CPU s, server CPU s or None) of count clients sending one request
        each at once; a request that failed has latency None and its error as info."""
        barrier = threading.Barrier(count + 1)

        def one(visitor):
            barrier.wait()
            try:
                return self.request(visitor)
            except Exception as e:  # noqa: BLE001 (counted and shown, the round goes on)
                return None, f'{type(e).__name__}: {e}'
        with self.visitors(count) as visitors, concurrent.futures.ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(one, visitor) for visitor in visitors]
            before, server_before = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(self.server_pid)
            barrier.wait()
            start = time.perf_counter()
            results = [future.result() for future in futures]
            wall = time.perf_counter() - start
        after, server_after = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(self.server_pid)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        server = None if server_before is None or server_after is None else server_after - server_before
        return wall, results, cpu, server


def sampler_seconds(infos):
    """(total seconds, number of batches) of the distinct batches named in info lines, or (None, 0)."""
    batches = {}
    for info in infos:
        found = INFO.search(info or '')
        if found:
            batches[found.group(2)] = float(found.group(1))
    return (sum(batches.values()), len(batches)) if batches else (None, 0)


def model_alone(args):
    """Median seconds of the app's model work (Session.run_batch: sampling, decoding, formation stages) in this
    process, nothing else running, for one request and for the others of a round merged: {1: s, clients - 1: s}."""
    import app
    from models.sample_batches import sample_seeds
    flags = app.parse_args(shlex.split(args.app_args))
    session = app.load_session(args.checkpoint or app.DEMO_CHECKPOINT, flags.device, flags.use_ema, flags.precision,
                               own_thread=False)  # run_batch is called here, no worker needed
    settings = session.settings(args.schedule, args.cfg, args.cfg_start_step)
    label = args.label or session.classes[0]

    def seconds(requests):
        items = [(session.label(label, args.images), sample_seeds(seed, range(args.images)))
                 for seed in range(requests)]
        times = []
        for _ in range(4):  # the first warms up
            times.append(session.run_batch(('generate', settings), items, None)[0][1].seconds)
        return statistics.median(times[1:])
    return {requests: seconds(requests) for requests in sorted({1, max(1, args.clients - 1)})}


def report(name, load, args, alone=None):
    """Print the solo and concurrent figures of one server, then a summary line against the serving bounds (solo
    within 1 s + 3 x the sampler's time; every round within 3 x the solo p50); returns the number of failed
    requests."""
    solo = load.solo(args.solo)
    latencies = [latency for latency, _ in solo]
    p50 = statistics.median(latencies)
    sampled = [sampler_seconds([info])[0] for _, info in solo]
    line = (f'{name}: solo, {args.solo} requests: latency p50 {p50:.3f} s (min {min(latencies):.3f}, '
            f'max {max(latencies):.3f})')
    if sampled[0] is not None:
        bound = 1 + 3 * statistics.median(sampled)
        line += (f'; sampler {statistics.median(sampled):.3f} s; 1 s + 3 x sampler = {bound:.3f} s: '
                 f'{"holds" if p50 <= bound else "does not hold"}')
    print(line, flush=True)
    walls, failures = [], 0
    for round_ in range(1, args.rounds + 1):
        wall, results, cpu, server = load.concurrent(args.clients)
        latencies = [latency for latency, _ in results if latency is not None]
        errors = [info for latency, info in results if latency is None]
        seconds, batches = sampler_seconds([info for _, info in results])
        sampler = f'; sampler {seconds:.3f} s in {batches} batch(es)' if seconds is not None else ''
        server = f', server CPU {server:.2f} s' if server is not None else ''
        answered = (f'latency p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s'
                    if latencies else 'none answered')
        failed = f'; {len(errors)} FAILED, the first with {errors[0]}' if errors else ''
        print(f'{name}: {args.clients} clients at once, round {round_}: all done in {wall:.2f} s '
              f'({len(latencies) * args.images / wall:.1f} images/s, {wall / p50:.1f}x the solo p50), {answered}'
              f'{sampler}; client CPU {cpu:.2f} s{server}{failed}', flush=True)
        walls.append(wall)
        failures += len(errors)
    if walls:
        within = max(walls) <= 3 * p50
        model = round_alone(alone, args.clients) if alone else None
        print(f'{name}: summary: solo p50 {p50:.3f} s; {args.rounds} round(s) of {args.clients} clients all done in '
              f'{min(walls):.2f}-{max(walls):.2f} s = {min(walls) / p50:.1f}-{max(walls) / p50:.1f}x the solo p50, '
              f'within 3x: {"yes" if within else "no"}; {failures} of {args.rounds * args.clients} requests failed'
              + (f'; the model\'s work alone for a round (1 request, then {args.clients - 1} merged) {model:.3f} s '
                 f'= {model / p50:.1f}x the solo p50' if alone else ''), flush=True)
    return failures


def round_alone(alone, clients):
    """Seconds of a round's model work alone: the first request on its own, the rest merged (as the batcher
    runs them when they arrive together)."""
    return alone[1] + (alone[clients - 1] if clients > 1 else 0)


def serve_floor(port, folder):
    """A page with the app's Generate inputs and outputs that returns a fixed answer of the same sizes (the grid
    of 16 demo images, a 9-frame GIF, a maps image, written to files in folder as the app writes them), doing no
    other work: the cost of Gradio itself."""
    import gradio as gr
    from PIL import Image

    from app import RecentFiles
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (148, 264, 3), dtype=np.uint8) // 64 * 64) for _ in range(9)]
    gif = os.path.join(folder, 'forming.gif')
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=400, loop=0)
    grid = np.kron(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))[:266, :266]
    maps = np.kron(rng.integers(0, 255, (29, 24, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))

    files = RecentFiles(folder, keep=512)  # bounded, as the app's

    def own(image, seed):
        """The image with the request's seed in its first pixels, as a new PNG: bytes of its own, as the app's
        answers have, so that Gradio copies each into its cache (it does not copy bytes it has cached already)."""
        image = image.copy()
        image.flat[:8] = np.frombuffer(int(seed).to_bytes(8, 'little'), np.uint8)
        return files.png(image)

    def generate(label, schedule, cfg, cfg_start_step, temperature, top_k, top_p, seed, num_images, shown):
        return own(grid, seed), gif, own(maps, seed), 'no work done'
    with gr.Blocks() as page:
        inputs = [gr.Dropdown(['none'], value='none'), gr.Textbox(), *[gr.Number() for _ in range(8)]]
        outputs = [gr.Image(type='filepath'), gr.Image(type='filepath'), gr.Image(type='filepath'), gr.Markdown()]
        gr.Button().click(generate, inputs, outputs, api_name='generate')
    page.queue(default_concurrency_limit=64, max_size=64).launch(server_port=port, max_threads=200, quiet=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', help='the generator the app serves (default: the demo\'s)')
    p.add_argument('--clients', type=int, default=16, help='clients sending one request each at once')
    p.add_argument('--images', type=int, default=16, help='images per request')
    p.add_argument('--rounds', type=int, default=3, help='rounds of concurrent requests')
    p.add_argument('--solo', type=int, default=5, help='requests sent one at a time, before the rounds')
    p.add_argument('--schedule', default='4')
    p.add_argument('--cfg', type=float, default=2.0)
    p.add_argument('--cfg_start_step', type=int, default=1)
    p.add_argument('--label', help='the class (default: the first)')
    p.add_argument('--app_args', default='', help="more flags for app.py, e.g. '--precision auto --device cuda'")
    p.add_argument('--floor', action='store_true', help='also measure a page that does no work')
    p.add_argument('--model_alone', action='store_true',
                   help="first time the app's model work for a round in this process, nothing else running")
    p.add_argument('--startup_timeout', type=float, default=300)
    p.add_argument('--serve_floor', nargs=2, metavar=('PORT', 'FOLDER'), help=argparse.SUPPRESS)  # --floor's server
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.serve_floor:
        return serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
    from util.provenance import cpu_name
    servers = [('app', [sys.executable, 'app.py', *(['--checkpoint', args.checkpoint] if args.checkpoint else []),
                        *args.app_args.split()])]
    if args.floor:
        servers.append(('floor', [sys.executable, '-m', 'tools.load_test']))
    print(f'{args.images} images per request, schedule {args.schedule}, cfg {args.cfg:g} from step '
          f'{args.cfg_start_step}; server and clients on {cpu_name()} ({os.cpu_count()} cores)', flush=True)
    alone = model_alone(args) if args.model_alone else None
    if alone:
        print('model alone, in this process before the servers start (Session.run_batch, medians of 3): '
              + ', '.join(f'{requests} request(s) of {args.images} images {seconds:.3f} s'
                          for requests, seconds in alone.items()), flush=True)
    failures = 0
    with tempfile.TemporaryDirectory(prefix='load-test-', ignore_cleanup_errors=True) as folder:
        for name, command in servers:
            port = free_port()
            command += ['--serve_floor', str(port), folder] if name == 'floor' else ['--port', str(port)]
            with served(command, port, os.path.join(folder, f'{name}.log'), args.startup_timeout) as (url, pid):
                failures += report(name, Load(url, pid, args), args, alone if name == 'app' else None)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
