"""Does `torch.compile` speed up the sliced ResNet-20 on the PyTorch backend?

Prints a table and writes benchmarks/results/torch_compile.json.

    python benchmarks/torch_compile.py [--rates 1,0.25]
        [--compilers eager,aot_eager,inductor] [--compile_repeats 5]
        [--compile_threads 1]

Forward+backward of `SlicingModel.at_rate(r)` (batch 128, 32x32x3, the model
of `train_step.py`), uncompiled against the same function under
`torch.compile` with each compiler backend, rounds interleaved, medians
reported, with the seconds the first (compiling) call took. The backends:
`eager` (Dynamo captures the graph and runs its ops as they are: what
`SlicingModel` uses under `jit_compile=True`), `aot_eager` (also traces the
backward pass ahead of time, with decomposed ops) and `inductor` (generates
fused kernels). The rate is a Python float, so each
width is its own compiled graph, as each rate set would be in training.
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

flags.DEFINE_string("rates", "1,0.25", "Comma-separated slice rates.")
flags.DEFINE_string("compilers", "eager,aot_eager", "torch.compile backends.")
flags.DEFINE_integer("compile_repeats", 5, "Timed rounds.")
flags.DEFINE_integer("compile_threads", 1, "torch compute threads (0: default).")
FLAGS = flags.FLAGS
UNCOMPILED = "uncompiled"


def main(_):
    import keras
    import numpy as np
    import torch

    if FLAGS.compile_threads:
        torch.set_num_threads(FLAGS.compile_threads)
    resnet = train_step._load_example("cifar10_resnet")
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(128, 32, 32, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 10, size=(128,)).astype("int32"))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = resnet.preact_resnet(20, seed=0)
    rates = [float(r) for r in FLAGS.rates.split(",")]
    compilers = [c for c in FLAGS.compilers.split(",") if c]

    candidates, compile_s = {}, {}
    for rate in rates:
        sliced = model.at_rate(rate)
        params = [v.value for v in sliced.trainable_variables]

        def forward(x, y, sliced=sliced):
            return loss(y, sliced(x, training=True))

        for name in [UNCOMPILED] + compilers:
            # dynamic=False as in SlicingModel: the rate and the shapes are
            # constants of each width's graph, so it has no graph breaks.
            fn = forward if name == UNCOMPILED else torch.compile(
                forward, backend=name, dynamic=False
            )

            def run(fn=fn, params=params):
                return torch.autograd.grad(fn(x, y), params)

            begin = time.perf_counter()
            run()
            compile_s[(rate, name)] = time.perf_counter() - begin
            candidates[(rate, name)] = run
    medians = common.interleaved_medians(candidates, FLAGS.compile_repeats)

    rows = []
    for rate in rates:
        plain = medians[(rate, UNCOMPILED)]
        for name in [UNCOMPILED] + compilers:
            ms = medians[(rate, name)] * 1e3
            rows.append([f"{rate:g}", name, f"{ms:.0f}", f"{ms / plain / 1e3:.2f}x",
                         f"{compile_s[(rate, name)]:.1f}"])
    common.print_table(
        f"forward+backward, sliced ResNet-20, batch 128, PyTorch {torch.__version__}, "
        f"{FLAGS.compile_threads or 'default'} thread(s), medians of "
        f"{FLAGS.compile_repeats} interleaved rounds",
        ["rate", "path", "ms", "x uncompiled", "first call s"], rows,
    )
    common.write_json("torch_compile", output=FLAGS.output, payload={
        "ms": {f"{r:g} {n}": medians[(r, n)] * 1e3 for r, n in medians},
        "first_call_s": {f"{r:g} {n}": s for (r, n), s in compile_s.items()},
        "threads": FLAGS.compile_threads, "repeats": FLAGS.compile_repeats,
        "torch": torch.__version__, "keras": keras.__version__,
    })


if __name__ == "__main__":
    app.run(main)
