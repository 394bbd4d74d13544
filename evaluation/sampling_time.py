"""Sampling time per image of several models, timed in one process and interleaved: one batch of every (model,
schedule) in turn, over several rounds, so that every figure sees the same machine state; the median over the
rounds, with the fastest and the slowest round beside it."""
import statistics
import time

from models.checkerboard import serial_steps
from models.sample_batches import draw_samples


def time_sampling(models, schedules, settings_of, batch_size, rounds, seed=0):
    """{name: [{'schedule', 'serial_steps', 'seconds_per_image', 'seconds_per_image_min',
    'seconds_per_image_max'}]} for models {name: generator}, schedules {name: [schedule, ...]} and
    settings_of(name, schedule): its SampleSettings. A batch is batch_size class-balanced samples decoded to
    images, as the sweep draws them; an untimed round comes first (warm-up)."""
    pairs = [(name, schedule) for name in models for schedule in schedules[name]]

    def one_batch(name, schedule):
        start = time.perf_counter()
        for _ in draw_samples(models[name], settings_of(name, schedule), list(range(batch_size)), batch_size,
                              seed, batch_size):
            pass
        return (time.perf_counter() - start) / batch_size

    for pair in pairs:
        one_batch(*pair)
    times = {pair: [] for pair in pairs}
    for _ in range(rounds):
        for pair in pairs:
            times[pair].append(one_batch(*pair))
    return {name: [{'schedule': schedule, 'serial_steps': serial_steps(models[name].sides, schedule),
                    'seconds_per_image': statistics.median(times[name, schedule]),
                    'seconds_per_image_min': min(times[name, schedule]),
                    'seconds_per_image_max': max(times[name, schedule])}
                   for schedule in schedules[name]] for name in models}
