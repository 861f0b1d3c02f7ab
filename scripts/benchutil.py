"""The benchmark convention of `nabla bench` for the PyTorch reference scripts: warm up, repeat
until min_reps and min_time are reached, report (median, min, max, reps) in seconds."""
import time


def measure(fn, warmup=2, min_time=0.5, min_reps=5, max_reps=1000):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], times[0], times[-1], len(times)
