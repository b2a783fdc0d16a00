"""Shared helpers of the benchmarks: machine facts, timing, output."""

import json
import os
import pathlib
import platform
import statistics
import time

RESULTS_DIR = pathlib.Path(__file__).parent / "results"


def machine_facts():
    import keras
    import tensorflow as tf

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def interleaved_medians(candidates, repeats, warmup=2):
    """Median seconds per call of each named callable, timed round-robin.

    Interleaving spreads slow phases of a shared machine over all candidates,
    so their ratios stay meaningful.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def print_table(title, header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def write_json(name, payload, output=None):
    path = pathlib.Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    print(f"\nwrote {path}")
    return path
