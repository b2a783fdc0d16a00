"""Forward+backward time of sliced layer stacks per rate on each Keras backend.

Prints a side-by-side table and writes benchmarks/results/backends.json.

    python benchmarks/backends.py [--backends tensorflow,jax,torch] [--repeats 5]

A process has one Keras backend, so each backend runs in its own interpreter
(`--worker`), one after the other. Each measures a 4x SlicedConv2D and a
4x SlicedDense stack (every layer slicing input and output, so each costs
r^2 of its full MACs) the way that backend runs a width:
- tensorflow: one traced `tf.function` for all rates, the rate a tensor;
- jax: one `jax.jit` per width, the rate a static Python float
  (`stateless_call`, `jax.grad`);
- torch: eager, the rate a tensor (as a model's rate input passes it).
The plain Keras stack of the same shape is timed too ("plain").
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402

flags.DEFINE_string("backends", "tensorflow,jax,torch", "Comma-separated backends.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (interleaved within a backend).")
flags.DEFINE_integer("batch", 32, "Batch size of the conv stack.")
flags.DEFINE_integer("conv_channels", 128, "Channels of the conv stack.")
flags.DEFINE_integer("size", 32, "Height and width of the conv stack's input.")
flags.DEFINE_integer("mlp_batch", 512, "Batch size of the MLP.")
flags.DEFINE_integer("mlp_units", 1024, "Units of the MLP layers.")
flags.DEFINE_string("worker", None, "Internal: measure this process's backend into FILE.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)


def _stacks():
    import keras

    from keras_slicing import layers

    c, u = FLAGS.conv_channels, FLAGS.mlp_units
    return {
        "conv": (
            lambda sliced: [
                (layers.SlicedConv2D if sliced else keras.layers.Conv2D)(
                    c, 3, padding="same", activation="relu"
                )
                for _ in range(4)
            ],
            (FLAGS.batch, FLAGS.size, FLAGS.size, c),
        ),
        "mlp": (
            lambda sliced: [
                (layers.SlicedDense if sliced else keras.layers.Dense)(u, activation="relu")
                for _ in range(4)
            ],
            (FLAGS.mlp_batch, u),
        ),
    }


def _steps_tensorflow(stack, plain, inputs):
    import tensorflow as tf

    def make(layers_, sliced):
        full = inputs[1.0]
        spec = tf.TensorSpec((*full.shape[:-1], None))

        @tf.function(input_signature=[spec, tf.TensorSpec((full.shape[0],))])
        def step(x, rate):
            with tf.GradientTape() as tape:
                h = x
                for layer in layers_:
                    h = layer(h, rate) if sliced else layer(h)
                loss = tf.reduce_mean(tf.square(h))
            variables = [v for layer in layers_ for v in layer.trainable_variables]
            return tape.gradient(loss, variables)

        return step

    sliced_step, plain_step = make(stack, True), make(plain, False)
    batch = inputs[1.0].shape[0]
    steps = {r: (lambda r=r: sliced_step(inputs[r], tf.fill([batch], r))) for r in RATES}
    steps["plain"] = lambda: plain_step(inputs[1.0], tf.ones([batch]))
    return steps


def _steps_jax(stack, plain, inputs):
    import jax
    import jax.numpy as jnp

    def make(layers_, rate):
        def loss(trainable, x):
            h = x
            for layer, values in zip(layers_, trainable):
                kwargs = {} if rate is None else {"rate": rate}
                h, _ = layer.stateless_call(values, [], h, **kwargs)
            return jnp.mean(jnp.square(h))

        grad = jax.jit(jax.grad(loss))
        trainable = [[v.value for v in layer.trainable_variables] for layer in layers_]
        return lambda x: jax.block_until_ready(grad(trainable, x))

    steps = {}
    for r in RATES:
        step = make(stack, r)  # one compiled function per width
        steps[r] = lambda step=step, r=r: step(inputs[r])
    plain_step = make(plain, None)
    steps["plain"] = lambda: plain_step(inputs[1.0])
    return steps


def _steps_torch(stack, plain, inputs):
    import torch

    def make(layers_, sliced):
        params = [v.value for layer in layers_ for v in layer.trainable_variables]

        def step(x, rate):
            h = x
            for layer in layers_:
                h = layer(h, rate) if sliced else layer(h)
            return torch.autograd.grad(torch.mean(torch.square(h)), params)

        return step

    sliced_step, plain_step = make(stack, True), make(plain, False)
    batch = inputs[1.0].shape[0]
    rates = {r: torch.full((batch,), r) for r in RATES}
    steps = {r: (lambda r=r: sliced_step(inputs[r], rates[r])) for r in RATES}
    steps["plain"] = lambda: plain_step(inputs[1.0], None)
    return steps


def worker(path):
    import keras
    import numpy as np

    from keras_slicing.rates import DEFAULT_SLICE_GROUPS
    from keras_slicing.rates import active_width

    backend = keras.backend.backend()
    make_steps = {
        "tensorflow": _steps_tensorflow,
        "jax": _steps_jax,
        "torch": _steps_torch,
    }[backend]
    result = {"backend": backend, "keras": keras.__version__, "cpu_count": os.cpu_count()}
    result["version"] = __import__(backend).__version__
    for name, (build, shape) in _stacks().items():
        stack, plain = build(True), build(False)
        for layers_ in (stack, plain):
            for layer in layers_:
                layer.build(shape)
        for a, b in zip(stack, plain):
            b.set_weights(a.get_weights())
        x = np.random.default_rng(0).normal(size=shape).astype("float32")
        width = shape[-1]
        inputs = {
            r: keras.ops.convert_to_tensor(
                x[..., : active_width(width, r, DEFAULT_SLICE_GROUPS)]
            )
            for r in RATES
        }
        medians = common.interleaved_medians(make_steps(stack, plain, inputs), FLAGS.repeats)
        result[name] = {str(k): v * 1000 for k, v in medians.items()}
    pathlib.Path(path).write_text(json.dumps(result))


def main(_):
    if FLAGS.worker:
        worker(FLAGS.worker)
        return
    results = {"repeats": FLAGS.repeats, "rates": RATES, "backends": {}}
    results["shapes"] = {
        "conv": f"4x Conv2D {FLAGS.conv_channels} ch 3x3, "
        f"{FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}",
        "mlp": f"4x Dense {FLAGS.mlp_units}, batch {FLAGS.mlp_batch}",
    }
    flags_to_pass = [
        f"--{name}={getattr(FLAGS, name)}"
        for name in ("repeats", "batch", "conv_channels", "size", "mlp_batch", "mlp_units")
    ]
    for backend in FLAGS.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "result.json"
            env = dict(os.environ, KERAS_BACKEND=backend)
            subprocess.run(
                [sys.executable, __file__, f"--worker={path}", *flags_to_pass],
                env=env, check=True, cwd=ROOT,
            )
            results["backends"][backend] = json.loads(path.read_text())
    backends = list(results["backends"])
    for name in ("conv", "mlp"):
        rows = []
        for key in [str(r) for r in RATES] + ["plain"]:
            row = [f"r={key}" if key != "plain" else "plain r=1"]
            for backend in backends:
                timing = results["backends"][backend][name]
                ms = timing[key]
                row.append(f"{ms:.1f} ({ms / timing['1.0']:.2f}x)")
            row.append(f"{float(key) ** 2:.3f}" if key != "plain" else "1.000")
            rows.append(row)
        common.print_table(
            f"{results['shapes'][name]}: forward+backward ms (x r=1)",
            ["rate", *backends, "MACs x r=1"],
            rows,
        )
    common.write_json("backends", results, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
