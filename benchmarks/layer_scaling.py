"""Forward+backward time of sliced layer stacks against rate and plain Keras.

Prints a table and writes benchmarks/results/layer_scaling.json. Targets:
r=0.5 at most 0.35x and r=0.25 at most 0.12x of r=1 (conv stack), and r=1 at
most 1.05x of the same stack of plain Keras layers.

    python benchmarks/layer_scaling.py [--batch 32] [--mlp_batch 512] [--repeats 7]
        [--stacks conv,mlp,lstm,mha]

Every layer slices its input and output, so each costs r^2 of its full MACs
(attention: r^2 for the projections, r for the attention itself, as heads
are sliced); the MACs column is `keras_slicing.model_cost`'s ratio.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import rate_input  # noqa: E402
from keras_slicing.rates import DEFAULT_SLICE_GROUPS  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402

flags.DEFINE_integer("batch", 32, "Batch size of the conv stack.")
flags.DEFINE_integer("mlp_batch", 512, "Batch size of the MLP.")
flags.DEFINE_integer("repeats", 7, "Timed rounds (interleaved).")
flags.DEFINE_integer("conv_channels", 128, "Channels of the conv stack.")
flags.DEFINE_integer("mlp_units", 1024, "Units of the MLP layers.")
flags.DEFINE_integer("seq_batch", 32, "Batch size of the LSTM and attention stacks.")
flags.DEFINE_integer("seq_len", 32, "Time steps of the LSTM and attention stacks.")
flags.DEFINE_integer("seq_units", 256, "Units of the LSTM and attention stacks.")
flags.DEFINE_list("stacks", ["conv", "mlp", "lstm", "mha"], "Stacks to time.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)


# Every layer of the stacks slices its input and output (the input arrives at
# the active width, as from a sliced predecessor), so each costs r^2.
def conv_stack(sliced, channels):
    if sliced:
        return [
            layers.SlicedConv2D(channels, 3, padding="same", activation="relu")
            for _ in range(4)
        ]
    return [
        keras.layers.Conv2D(channels, 3, padding="same", activation="relu")
        for _ in range(4)
    ]


def mlp(sliced, units):
    cls = layers.SlicedDense if sliced else keras.layers.Dense
    return [cls(units, activation="relu") for _ in range(4)]


def lstm_stack(sliced, units):
    cls = layers.SlicedLSTM if sliced else keras.layers.LSTM
    return [cls(units, return_sequences=True) for _ in range(4)]


def attention_stack(sliced, units):
    # Self-attention whose input, heads and output are all sliced (a sliced
    # residual stream): 8 heads of units / 8.
    cls = layers.SlicedMultiHeadAttention if sliced else keras.layers.MultiHeadAttention
    return [cls(8, units // 8) for _ in range(4)]


def apply(layer, h, rate, sliced):
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return layer(h, h, rate=rate) if sliced else layer(h, h)
    return layer(h, rate) if sliced else layer(h)


def as_model(stack, input_shape, sliced):
    x = keras.Input(input_shape)
    rate = rate_input()
    h = x
    for layer in stack:
        h = apply(layer, h, rate, sliced)
    return keras.Model([x, rate], h) if sliced else keras.Model(x, h)


def stack_macs(stack, input_shape, rate):
    """MACs per example of the stack fed the active width, as timed."""
    width = active_width(input_shape[-1], rate, DEFAULT_SLICE_GROUPS)
    model = as_model(stack, (*input_shape[:-1], width), True)
    return model_cost(model, rate)["macs"]


def train_step_fn(stack, input_shape, batch, sliced):
    """One traced step for all rates: the channel axis is left unknown."""
    spec = tf.TensorSpec((batch, *input_shape[:-1], None))

    @tf.function(input_signature=[spec, tf.TensorSpec((batch,))])
    def step(x, rate):
        with tf.GradientTape() as tape:
            h = x
            for layer in stack:
                h = apply(layer, h, rate, sliced)
            loss = tf.reduce_mean(tf.square(h))
        variables = [v for layer in stack for v in layer.trainable_variables]
        return tape.gradient(loss, variables)

    return step


def measure(name, build, input_shape, batch):
    sliced_stack, plain_stack = build(True), build(False)
    # Building both as models creates their weights; copy so they match.
    sliced_model = as_model(sliced_stack, input_shape, True)
    as_model(plain_stack, input_shape, False).set_weights(sliced_model.get_weights())
    x = tf.random.normal((batch, *input_shape), seed=0)
    width = input_shape[-1]
    inputs = {r: x[..., : active_width(width, r, DEFAULT_SLICE_GROUPS)] for r in RATES}
    sliced_step = train_step_fn(sliced_stack, input_shape, batch, True)
    plain_step = train_step_fn(plain_stack, input_shape, batch, False)
    candidates = {
        f"sliced r={rate:g}": (
            lambda r=rate: sliced_step(inputs[r], tf.fill([batch], r))
        )
        for rate in RATES
    }
    candidates["plain keras"] = lambda: plain_step(x, tf.ones([batch]))
    medians = common.interleaved_medians(candidates, FLAGS.repeats)
    assert sliced_step.experimental_get_tracing_count() == 1
    full = medians["sliced r=1"]
    full_macs = stack_macs(sliced_stack, input_shape, 1.0)
    rows, result = [], {}
    for key, seconds in medians.items():
        ratio = seconds / full
        rate = float(key.split("=")[1]) if key.startswith("sliced") else 1.0
        mac_ratio = stack_macs(sliced_stack, input_shape, rate) / full_macs
        rows.append((key, f"{seconds * 1000:.1f}", f"{ratio:.3f}", f"{mac_ratio:.3f}"))
        result[key] = {"ms": seconds * 1000, "ratio_to_r1": ratio, "mac_ratio": mac_ratio}
    result["overhead_r1_vs_plain"] = full / medians["plain keras"]
    common.print_table(
        f"{name}: forward+backward, batch {batch} (one traced graph for all rates)",
        ["config", "ms", "time x r=1", "MACs x r=1"],
        rows,
    )
    print(f"overhead of sliced r=1 over plain Keras: {result['overhead_r1_vs_plain']:.3f}x")
    return result


def main(_):
    facts = common.machine_facts()
    print("machine:", facts)
    c, u = FLAGS.conv_channels, FLAGS.mlp_units
    t, v = FLAGS.seq_len, FLAGS.seq_units
    results = {
        "machine": facts,
        "batch": FLAGS.batch,
        "mlp_batch": FLAGS.mlp_batch,
        "seq_batch": FLAGS.seq_batch,
        "repeats": FLAGS.repeats,
    }
    stacks = {
        "conv": ("conv_stack", f"4x Conv2D {c} ch, 32x32",
                 lambda s: conv_stack(s, c), (32, 32, c), FLAGS.batch),
        "mlp": ("mlp", f"4x Dense {u}", lambda s: mlp(s, u), (u,), FLAGS.mlp_batch),
        "lstm": ("lstm_stack", f"4x LSTM {v}, {t} steps",
                 lambda s: lstm_stack(s, v), (t, v), FLAGS.seq_batch),
        "mha": ("attention_stack", f"4x MultiHeadAttention 8 heads, {v} wide, {t} steps",
                lambda s: attention_stack(s, v), (t, v), FLAGS.seq_batch),
    }
    for name in FLAGS.stacks:
        key, title, build, shape, batch = stacks[name]
        results[key] = measure(title, build, shape, batch)
    if "conv_stack" in results:
        conv = results["conv_stack"]
        results["targets"] = {
            "conv_r0.5_le_0.35": conv["sliced r=0.5"]["ratio_to_r1"] <= 0.35,
            "conv_r0.25_le_0.12": conv["sliced r=0.25"]["ratio_to_r1"] <= 0.12,
            "conv_overhead_r1_le_1.05": conv["overhead_r1_vs_plain"] <= 1.05,
        }
        print("targets met:", results["targets"])
    common.write_json("layer_scaling", results, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
