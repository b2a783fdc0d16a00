"""A sliced Transformer (MatFormer-style) as a character language model.

The same task, corpus, split and table as `char_lm.py`: predict the next
character of Python's documentation (`pydoc_data.topics`), scored in bits
per character, so the two examples compare directly. The model is a small
causal Transformer encoder whose residual stream keeps its full width while
every block's attention heads and feed-forward hidden units are sliced
(MatFormer's nested widths): at rate r a block runs the first
ceil(r * heads) heads and the first ceil(r * 8) eighths of its feed-forward
units. One `SlicingModel` is trained (rates 1, 0.75, 0.5, 0.25;
random_min_max), every width is exported to TFLite (builtin ops only) and
checked, and a plain Transformer of each width is trained alone with the
same budget. Usage:

    python examples/text_transformer.py [--steps=300] [--data_file=...]
        [--output_dir=results_text_transformer] [--results_file=...]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import char_lm  # noqa: E402
import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import keras_slicing  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.rates import DEFAULT_RATES  # noqa: E402
from keras_slicing.rates import active_groups  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("data_file", None, "Local UTF-8 text file; default: pydoc_data.")
    flags.DEFINE_integer("seq_len", 32, "Characters per training window.")
    flags.DEFINE_integer("model_dim", 64, "Width of the residual stream (not sliced).")
    flags.DEFINE_integer("num_heads", 4, "Attention heads per block (sliced).")
    flags.DEFINE_integer("ffn_units", 256, "Feed-forward hidden units (sliced).")
    flags.DEFINE_integer("num_blocks", 2, "Transformer blocks.")
    flags.DEFINE_integer("steps", 300, "Training steps (batches), every model.")
    flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
    flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Random seed (weights, batches, rates).")
    flags.DEFINE_bool("baselines", True, "Also train a plain model per width.")
    flags.DEFINE_string("output_dir", "results_text_transformer", "Where everything is written.")
    flags.DEFINE_string("results_file", None, "Results JSON; default OUTPUT_DIR/results.json.")
    flags.DEFINE_integer("curve_points", 10, "Validations along training (0: none).")
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")


@keras.saving.register_keras_serializable(package="keras_slicing_examples")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a `(batch, T, d)` input."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal", name="positions"
        )

    def call(self, inputs):
        return inputs + self.positions

    def active_cost(self, rate, input_shapes, output_shapes):
        """For `keras_slicing.model_cost`: its weights; additions are no MACs."""
        return self.positions.shape[0] * self.positions.shape[1], 0


def _transformer(vocab_size, seq_len, model_dim, num_blocks, attention, ffn_in,
                 ffn_out, rate=None):
    """Pre-norm causal blocks; `attention`/`ffn_*` make each block's layers."""
    ids = keras.Input((seq_len,), dtype="int32", name="characters")
    if rate is None:
        x = keras.layers.Embedding(vocab_size, model_dim, name="embedding")(ids)
    else:  # full width, but counted by model_cost
        embedding = layers.SlicedEmbedding(
            vocab_size, model_dim, slice_output=False, name="embedding"
        )
        x = embedding(ids, rate)
    x = PositionEmbedding(name="positions")(x)
    call = (lambda layer, h: layer(h)) if rate is None else (lambda layer, h: layer(h, rate))
    for i in range(num_blocks):
        h = keras.layers.LayerNormalization(name=f"block_{i}_norm_1")(x)
        mha = attention(f"block_{i}_attention")
        if rate is None:
            h = mha(h, h, use_causal_mask=True)
        else:
            h = mha(h, h, rate=rate, use_causal_mask=True)
        x = keras.layers.Add(name=f"block_{i}_add_1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block_{i}_norm_2")(x)
        h = call(ffn_in(f"block_{i}_ffn_in"), h)
        h = call(ffn_out(f"block_{i}_ffn_out"), h)
        x = keras.layers.Add(name=f"block_{i}_add_2")([x, h])
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return ids, logits


def sliced_transformer(vocab_size, seq_len, model_dim=64, num_heads=4,
                       ffn_units=256, num_blocks=2, rates=DEFAULT_RATES, seed=0):
    """Heads and feed-forward units sliced; embedding and residual full."""
    rate = keras_slicing.rate_input()
    ids, logits = _transformer(
        vocab_size, seq_len, model_dim, num_blocks,
        lambda name: layers.SlicedMultiHeadAttention(
            num_heads, model_dim // num_heads, name=name
        ),
        lambda name: layers.SlicedDense(
            ffn_units, activation="gelu", slice_input=False, name=name
        ),
        lambda name: layers.SlicedDense(model_dim, slice_output=False, name=name),
        rate,
    )
    return keras_slicing.SlicingModel(
        [ids, rate], logits, rates=rates, scheduler="random_min_max",
        num_random=char_lm._num_random(rates), rate_loss_weights=[1.0] * len(rates),
        seed=seed, name="text_transformer",
    )


def plain_transformer(vocab_size, seq_len, model_dim, num_heads, ffn_units,
                      num_blocks, rate):
    """The same network built directly with the heads and units of `rate`."""
    heads = active_groups(rate, num_heads)
    units = active_width(ffn_units, rate, 8)
    ids, logits = _transformer(
        vocab_size, seq_len, model_dim, num_blocks,
        lambda name: keras.layers.MultiHeadAttention(
            heads, model_dim // num_heads, name=name
        ),
        lambda name: keras.layers.Dense(units, activation="gelu", name=name),
        lambda name: keras.layers.Dense(model_dim, name=name),
    )
    return keras.Model(ids, logits, name=f"plain_transformer_{rate:g}")


def run(output_dir, data_file=None, seq_len=32, model_dim=64, num_heads=4,
        ffn_units=256, num_blocks=2, steps=300, batch_size=32,
        learning_rate=3e-3, seed=0, baselines=True, rates=DEFAULT_RATES,
        verbose=1, results_file=None, curve_points=10):
    """The whole job; returns the results dictionary written to results.json."""
    sizes = {"model_dim": model_dim, "num_heads": num_heads,
             "ffn_units": ffn_units, "num_blocks": num_blocks}
    return char_lm.run_language_model(
        output_dir,
        lambda vocab_size, rates: sliced_transformer(
            vocab_size, seq_len, model_dim, num_heads, ffn_units, num_blocks,
            rates, seed,
        ),
        lambda vocab_size, rate: plain_transformer(
            vocab_size, seq_len, model_dim, num_heads, ffn_units, num_blocks, rate
        ),
        sizes, data_file, seq_len, steps, batch_size, learning_rate, seed,
        baselines, rates, verbose, results_file, curve_points,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the converter logs every file
    run(FLAGS.output_dir, FLAGS.data_file, FLAGS.seq_len, FLAGS.model_dim,
        FLAGS.num_heads, FLAGS.ffn_units, FLAGS.num_blocks, FLAGS.steps,
        FLAGS.batch_size, FLAGS.learning_rate, FLAGS.seed, FLAGS.baselines,
        verbose=FLAGS.verbose, results_file=FLAGS.results_file,
        curve_points=FLAGS.curve_points)


if __name__ == "__main__":
    define_flags()
    app.run(main)
