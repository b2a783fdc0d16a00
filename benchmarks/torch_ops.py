"""Where a width's time goes on PyTorch: the backend against the reference.

Prints one table per rate and writes benchmarks/results/torch_ops.json.

    python benchmarks/torch_ops.py [--rates 1,0.5,0.25] [--ops_repeats 3]

Forward+backward of `train_step.py`'s sliced ResNet-20 at each rate (batch
128, one compute thread), on the Keras PyTorch backend (uncompiled, channels
last) and in the plain PyTorch reference (channels first), under
`torch.profiler`. The ATen ops' own CPU time is summed by kind, per
forward+backward; "outside ATen ops" is the wall time less those sums: the
Python work of running the layers, mostly.
"""

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import train_step  # noqa: E402

flags.DEFINE_string("rates", "1,0.5,0.25", "Comma-separated slice rates.")
flags.DEFINE_integer("ops_repeats", 3, "Profiled forward+backward passes per rate.")
FLAGS = flags.FLAGS

KINDS = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward",
                    "aten::mm", "aten::bmm"),
    "group norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
    "copies": ("aten::copy_",),
    "relu": ("aten::clamp_min", "aten::threshold_backward"),
    "add": ("aten::add", "aten::add_"),
}
OTHER, OUTSIDE, WALL = "other ATen ops", "outside ATen ops", "wall"
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def profile(fn, repeats):
    """Milliseconds per call of each kind of op, and the wall time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        wall = (time.perf_counter() - begin) * 1e3 / repeats
    totals = dict.fromkeys([*KINDS, OTHER], 0.0)
    for event in prof.key_averages():
        kind = KIND_OF.get(event.key, OTHER)
        totals[kind] += event.self_cpu_time_total / 1e3 / repeats
    totals[OUTSIDE] = wall - sum(totals.values())
    totals[WALL] = wall
    return totals


def main(_):
    import torch

    torch.set_num_threads(1)
    rates = [float(r) for r in FLAGS.rates.split(",")]
    backend, _ = train_step._keras_candidates(128, 20, jit=False)
    reference, _ = train_step._reference_candidates(128, 20)
    results = {}
    for rate in rates:
        key = train_step._fb(rate)
        results[f"{rate:g}"] = {
            "backend": profile(backend[key], FLAGS.ops_repeats),
            "reference": profile(reference[key], FLAGS.ops_repeats),
        }
        per = results[f"{rate:g}"]
        rows = [[kind, f"{per['backend'][kind]:.0f}", f"{per['reference'][kind]:.0f}"]
                for kind in [*KINDS, OTHER, OUTSIDE, WALL]]
        common.print_table(
            f"r = {rate:g}: forward+backward, ms per pass (profiled, "
            f"{FLAGS.ops_repeats} passes, 1 thread, batch 128)",
            ["kind", "backend", "reference"], rows,
        )
    common.write_json("torch_ops", output=FLAGS.output, payload={
        "ms": results, "repeats": FLAGS.ops_repeats,
        "torch": torch.__version__,
    })


if __name__ == "__main__":
    app.run(main)
