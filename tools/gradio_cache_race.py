"""Why the app hands Gradio its images as files: concurrent requests with identical image answers, given to Gradio
as arrays (which it encodes and rewrites in place at a path named by the PNG's hash) or as files (which it copies
into its cache atomically). Prints how many of the clients' downloads failed for each.

    python -m tools.gradio_cache_race --rounds 30
"""
import argparse
import concurrent.futures
import os
import sys
import tempfile

import numpy as np

from tools.load_test import free_port, served

KINDS = ('arrays', 'files')


def serve(port, folder):
    """A page whose endpoints /arrays and /files answer every request with the same two images."""
    import gradio as gr

    from app import RecentFiles
    rng = np.random.default_rng(0)
    images = [np.kron(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
              for h, w in ((16, 16), (29, 24))]
    files = RecentFiles(folder, keep=512)
    with gr.Blocks() as page:
        text = gr.Textbox()
        gr.Button().click(lambda _: images, [text], [gr.Image(format='png'), gr.Image(format='png')],
                          api_name='arrays')
        gr.Button().click(lambda _: [files.png(image) for image in images], [text],
                          [gr.Image(type='filepath'), gr.Image(type='filepath')], api_name='files')
    page.queue(default_concurrency_limit=64, max_size=64).launch(server_port=port, max_threads=200, quiet=True)


def failures(url, kind, clients, rounds):
    """(failed requests, first error) of rounds of `clients` clients asking /kind at once."""
    from gradio_client import Client
    connected = [Client(url, verbose=False) for _ in range(clients)]
    failed, first = 0, None
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            for future in [pool.submit(c.predict, 'x', api_name=f'/{kind}') for c in connected]:
                try:
                    future.result()
                except Exception as e:  # noqa: BLE001 (what is counted)
                    failed, first = failed + 1, first or f'{type(e).__name__}: {e}'
    return failed, first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--clients', type=int, default=16)
    p.add_argument('--rounds', type=int, default=30, help='rounds of each kind, interleaved in blocks of 5')
    p.add_argument('--serve', nargs=2, metavar=('PORT', 'FOLDER'), help=argparse.SUPPRESS)  # the server
    args = p.parse_args(argv)
    if args.serve:
        return serve(int(args.serve[0]), args.serve[1])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix='gradio-cache-race-', ignore_cleanup_errors=True) as folder, \
            served([sys.executable, '-m', 'tools.gradio_cache_race', '--serve', str(port), folder], port,
                   os.path.join(folder, 'server.log'), timeout=120) as (url, _):
        failed, first, requests = dict.fromkeys(KINDS, 0), {}, 0
        for done in range(0, args.rounds, 5):
            rounds = min(5, args.rounds - done)
            for kind in KINDS:
                count, error = failures(url, kind, args.clients, rounds)
                failed[kind] += count
                if error:
                    first.setdefault(kind, error)
            requests += args.clients * rounds
        for kind in KINDS:
            print(f'{kind}: {failed[kind]} of {requests} requests failed'
                  + (f' (first: {first[kind]})' if kind in first else ''))

if __name__ == '__main__':
    main()
