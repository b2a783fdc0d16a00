"""Time of one SlicingModel training step against a plain Keras model.

Prints a table and writes benchmarks/results/step_overhead.json.

    python benchmarks/step_overhead.py [--batch 64] [--repeats 5] [--steps 8]

The sliced CNN trains with `random_min_max` and one random rate from
(1.0, 0.75, 0.5, 0.25), so a step runs r = 1, r = 0.25 and one of 0.75 / 0.5.
A layer sliced on both sides costs r^2 of its full multiply-accumulates, so
the expected step costs about 1 + E[r^2] + r_min^2 = 1.469 full steps (the
issue's estimate); the MACs-based estimate, from `model_cost`, also counts
the layers sliced on one side only (first convolution, logits), which cost r.
Target: measured / expected <= 1.15. Both the in-graph path (dynamic rate,
one trace) and the XLA path (`jit_compile=True`: host-sampled rates, one
compiled step per rate set) are timed against the plain model compiled the
same way; the first epoch (tracing or XLA compilation) is reported apart.
Steps run through each model's `train_function` on a live iterator, so
`fit`'s per-call set-up does not blur the ratios. A SlicingModel with one
rate per step gives the time of each width, and "expected from single-rate
steps" sums them the way a random_min_max step does (three updates instead
of one, so a fused step should stay below it).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import rate_input  # noqa: E402

flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("image", 32, "Height and width of the random images.")
flags.DEFINE_integer("steps", 8, "Training steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (interleaved).")
flags.DEFINE_boolean("xla", True, "Also time the jit_compile=True paths.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)
WIDTHS = (32, 64, 128, 128)
STRIDES = (1, 2, 2, 1)


def sliced_cnn(image):
    x = keras.Input((image, image, 3))
    rate = rate_input()
    h = x
    for i, (width, stride) in enumerate(zip(WIDTHS, STRIDES)):
        h = layers.SlicedConv2D(
            width, 3, strides=stride, padding="same", slice_input=i > 0
        )(h, rate)
        h = layers.SlicedGroupNormalization(groups=8)(h, rate)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False)(h, rate)
    return SlicingModel(
        [x, rate], y, rates=RATES, scheduler="random_min_max", num_random=1, seed=0
    )


def plain_cnn(image):
    x = keras.Input((image, image, 3))
    h = x
    for width, stride in zip(WIDTHS, STRIDES):
        h = keras.layers.Conv2D(width, 3, strides=stride, padding="same")(h)
        h = keras.layers.GroupNormalization(groups=8)(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = keras.layers.Dense(10)(h)
    return keras.Model(x, y)


def expected_costs(model):
    """(issue estimate, MACs estimate) of one random_min_max step, in full steps."""
    middle = RATES[1:-1]
    issue = 1.0 + np.mean([r * r for r in middle]) + RATES[-1] ** 2
    macs = {r: model_cost(model, r)["macs"] for r in RATES}
    full = macs[1.0]
    by_macs = 1.0 + np.mean([macs[r] / full for r in middle]) + macs[RATES[-1]] / full
    return float(issue), float(by_macs), {str(r): macs[r] / full for r in RATES}


def _single_rate(image, rate):
    base = sliced_cnn(image)
    return SlicingModel(base.inputs, base.outputs, rates=(rate,), scheduler="all")


def main(_):
    facts = common.machine_facts()
    print("train_step benchmark:", facts)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch, FLAGS.image, FLAGS.image, 3)).astype("float32")
    y = rng.integers(0, 10, size=(FLAGS.batch,)).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    builds = {"plain": (plain_cnn, False), "sliced": (sliced_cnn, False)}
    for rate in RATES:
        builds[f"rate {rate:g} only"] = (
            lambda image, r=rate: _single_rate(image, r),
            False,
        )
    if FLAGS.xla:
        builds["plain xla"] = (plain_cnn, True)
        builds["sliced xla"] = (sliced_cnn, True)
    candidates, first_epoch = {}, {}
    for name, (build, jit) in builds.items():
        keras.utils.set_random_seed(0)
        model = build(FLAGS.image)
        model.compile(keras.optimizers.SGD(0.01), loss, jit_compile=jit)
        start = time.perf_counter()
        # Long enough for the XLA path to meet every rate set it compiles.
        model.fit(data, steps_per_epoch=2 * FLAGS.steps, epochs=1, shuffle=False, verbose=0)
        first_epoch[name] = time.perf_counter() - start
        candidates[name] = _steps(model, iter(data))

    seconds = common.interleaved_medians(candidates, repeats=FLAGS.repeats, warmup=1)
    ms = {name: s / FLAGS.steps * 1e3 for name, s in seconds.items()}
    issue, by_macs, mac_ratio = expected_costs(candidates["sliced"].model)
    singles = [ms[f"rate {r:g} only"] for r in RATES]
    by_singles = (singles[0] + np.mean(singles[1:-1]) + singles[-1]) / ms["plain"]

    results = {"step_ms": ms, "first_epoch_s": first_epoch}
    rows = []
    for label, plain, sliced in (
        ("in-graph (dynamic)", "plain", "sliced"),
        ("xla (host-sampled)", "plain xla", "sliced xla"),
    ):
        if sliced not in ms:
            continue
        ratio = ms[sliced] / ms[plain]
        results[sliced] = {
            "measured_ratio": ratio,
            "measured_over_expected": ratio / issue,
            "measured_over_expected_macs": ratio / by_macs,
        }
        rows.append([
            label, f"{ms[plain]:.1f}", f"{ms[sliced]:.1f}", f"{ratio:.3f}",
            f"{ratio / issue:.3f}", f"{ratio / by_macs:.3f}",
            f"{first_epoch[sliced]:.1f}",
        ])
    common.print_table(
        f"random_min_max (num_random=1) step vs plain full-width step; batch "
        f"{FLAGS.batch}, {FLAGS.image}x{FLAGS.image}x3, medians of "
        f"{FLAGS.repeats} x {FLAGS.steps} steps",
        ["path", "plain ms", "sliced ms", "ratio", "/expected",
         "/expected(MACs)", "sliced 1st epoch s"],
        rows,
    )
    common.print_table(
        "one rate per step (SlicingModel, rates=(r,)), in-graph",
        ["rate", "ms", "x plain", "MACs x full"],
        [[f"{r:g}", f"{t:.1f}", f"{t / ms['plain']:.3f}", f"{mac_ratio[str(r)]:.3f}"]
         for r, t in zip(RATES, singles)],
    )
    print(
        f"\nexpected = 1 + E[r^2] + r_min^2 = {issue:.3f} full steps; from MACs "
        f"{by_macs:.3f}; from the single-rate steps above {by_singles:.3f} "
        f"(measured in-graph / that = "
        f"{ms['sliced'] / ms['plain'] / by_singles:.3f}); target "
        "measured/expected <= 1.15"
    )
    common.write_json(
        "step_overhead",
        {
            "machine": facts,
            "flags": {
                k: FLAGS[k].value for k in ("batch", "image", "steps", "repeats", "xla")
            },
            "expected_issue": issue,
            "expected_macs": by_macs,
            "expected_from_single_rate_steps": by_singles,
            "macs_ratio": mac_ratio,
            "results": results,
        },
        FLAGS.output,
    )


def _steps(model, iterator):
    """`FLAGS.steps` training steps on a live iterator (no per-call fit setup)."""

    def run():
        for _ in range(FLAGS.steps):
            logs = model.train_function(iterator)
        float(logs["loss"])  # waits for the last step

    run.model = model
    return run


if __name__ == "__main__":
    app.run(main)
