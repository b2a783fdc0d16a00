"""What checking a model at its first call costs.

Prints a table and writes benchmarks/results/call_check.json.

    python benchmarks/call_check.py [--repeats 30] [--blocks 13]

A sliced layer's first run checks the outermost functional model being
called (`keras_slicing.checks.check_called_model`): it finds the model on
the Python stack, walks the graph once with `check_model`, and remembers
the model. Two costs follow:

- one-off: the graph walk, `check_model`, timed on a MobileNet-like sliced
  network (`--blocks` depthwise-separable blocks with batch normalization)
  and a three-layer MLP;
- per call: every later run of a sliced layer still looks the model up (a
  stack walk and a set lookup). Compiled functions (`predict`, `fit`,
  `evaluate` on TensorFlow and JAX) run it only while tracing; an eager
  call (`model(x)`, the PyTorch backend) runs it per sliced layer. Timed as
  eager `model([x, rate])` with the lookup and with it replaced by a no-op,
  interleaved, batch 1 (where the overhead is the largest share);
- per call of `predict` (and `evaluate`, `fit`, ...): the check of the
  fed rates on the host (`keras_slicing.fed_rates`), timed alone and as
  `model.predict([x, rate])` against Keras' own `keras.Model.predict` on the
  same model, interleaved, batch 1.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_slicing import checks  # noqa: E402
from keras_slicing import fed_rates  # noqa: E402

L = keras_slicing.layers

flags.DEFINE_integer("repeats", 30, "Timed rounds (interleaved).")
flags.DEFINE_integer("blocks", 13, "Depthwise-separable blocks of the CNN.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS


def mobilenet_like(blocks):
    x = keras.Input((32, 32, 3))
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(32, 3, strides=2, padding="same", slice_input=False)(x, r)
    h = keras.layers.ReLU()(L.SlicedBatchNormalization()(h, r))
    for i in range(blocks):
        h = L.SlicedDepthwiseConv2D(3, padding="same")(h, r)
        h = keras.layers.ReLU()(L.SlicedBatchNormalization()(h, r))
        h = L.SlicedConv2D(min(32 * 2 ** (i // 3), 256), 1)(h, r)
        h = keras.layers.ReLU()(L.SlicedBatchNormalization()(h, r))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model([x, r], L.SlicedDense(10, slice_output=False)(h, r), name="cnn")


def mlp():
    x = keras.Input((64,))
    r = keras_slicing.rate_input()
    h = L.SlicedDense(64, activation="relu", slice_input=False)(x, r)
    h = L.SlicedDense(32, activation="relu")(h, r)
    return keras.Model([x, r], L.SlicedDense(10, slice_output=False)(h, r), name="mlp")


def seconds_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(_):
    models = {"mlp": mlp(), f"mobilenet-like ({FLAGS.blocks} blocks)": mobilenet_like(FLAGS.blocks)}
    inputs = {
        "mlp": [np.ones((1, 64), "float32"), np.full(1, 0.5, "float32")],
    }
    inputs[next(k for k in models if k != "mlp")] = [
        np.ones((1, 32, 32, 3), "float32"), np.full(1, 0.5, "float32")
    ]
    real_hook = checks.check_called_model
    spent = []

    def timed_hook():
        begin = time.perf_counter()
        real_hook()
        spent.append(time.perf_counter() - begin)

    rows, results = [], {}
    for name, model in models.items():
        sliced = sum(isinstance(l, L.base.SlicedLayerMixin) for l in model.layers)
        walk = seconds_of(lambda: checks.check_model(model), FLAGS.repeats)
        model(inputs[name])  # checked, and Keras' eager path warmed up
        checks.check_called_model = timed_hook
        try:
            spent.clear()
            call = seconds_of(lambda: model(inputs[name]), FLAGS.repeats)
        finally:
            checks.check_called_model = real_hook
        lookup = float(np.median(spent))
        guard = seconds_of(
            lambda: fed_rates.check_fed_rates(model, inputs[name], "predict"),
            FLAGS.repeats * 10,
        )
        guarded, own = [], []
        for _ in range(FLAGS.repeats):
            guarded.append(seconds_of(lambda: model.predict(inputs[name], verbose=0), 1))
            own.append(seconds_of(
                lambda: keras.Model.predict(model, inputs[name], verbose=0), 1
            ))
        guarded, own = float(np.median(guarded)), float(np.median(own))
        per_call = lookup * sliced
        results[name] = {
            "sliced_layers": sliced,
            "check_model_ms": walk * 1e3,
            "lookup_us_per_sliced_layer_call": lookup * 1e6,
            "lookup_ms_per_model_call": per_call * 1e3,
            "eager_model_call_ms": call * 1e3,
            "lookup_share_of_call": per_call / call,
            "rate_check_us_per_predict": guard * 1e6,
            "guarded_predict_ms": guarded * 1e3,
            "keras_predict_ms": own * 1e3,
            "rate_check_share_of_predict": guard / own,
        }
        rows.append((
            name, sliced, f"{walk * 1e3:.2f}", f"{lookup * 1e6:.1f}",
            f"{per_call * 1e3:.3f}", f"{call * 1e3:.2f}", f"{per_call / call:.1%}",
            f"{guard * 1e6:.1f}", f"{guarded * 1e3:.2f}", f"{own * 1e3:.2f}",
        ))
    common.print_table(
        "Model check at the first call (TensorFlow, eager, batch 1; shared machine)",
        ("model", "sliced layers", "check ms (once)", "lookup us/layer",
         "lookup ms/call", "eager call ms", "share", "rate check us/predict",
         "predict ms", "Keras predict ms"),
        rows,
    )
    common.write_json("call_check", {
        "machine": common.machine_facts(),
        "note": "shared 2-core machine; medians of interleaved rounds",
        "repeats": FLAGS.repeats,
        "results": results,
    }, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
