"""The paper's sliced recurrent language model, on text that ships offline.

A character-level language model (sliced embedding, two sliced LSTM layers,
and an output layer that reads the sliced hidden state) is trained ONCE with
`SlicingModel` (rates 1, 0.75, 0.5, 0.25; scheduler random_min_max) on the
English text of Python's own documentation (`pydoc_data.topics`, about
465,000 characters, part of every CPython). The text is split by position
into 90% train, 5% validation, 5% test. For every width it prints the
parameters, MACs per character, validation and test bits per character
(BPC), the test BPC of the exported TFLite file (builtin ops only) and its
size, and, unless --nobaselines, the test BPC of the same network built at
that width and trained alone with the same budget (steps, batch, optimizer).
A run longer than one pass over the training text makes further passes, each
in a new random order. The learning curve (validation BPC of every width,
and of every plain model, at `--curve_points` evenly spaced steps) goes into
the results. It writes:

    OUTPUT_DIR/char_lm.keras        the sliced Keras model
    OUTPUT_DIR/tflite/              one .tflite per width + manifest.json
    RESULTS_FILE                    every number printed and the learning
                                    curve (default OUTPUT_DIR/results.json)

Usage:

    python examples/char_lm.py [--steps=300] [--data_file=ptb.train.txt]
        [--output_dir=results_char_lm] [--results_file=...]

`--data_file` takes any local UTF-8 text file (e.g. Penn Treebank, the
paper's setting), split the same way. Windows of `--seq_len` characters are
modelled independently (the state starts at zero in each window).
"""

import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import keras_slicing  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.interpreter import load_interpreter  # noqa: E402
from keras_slicing.interpreter import run_tflite  # noqa: E402
from keras_slicing.rates import DEFAULT_RATES  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402

FLAGS = flags.FLAGS
SPLIT = (0.90, 0.05, 0.05)  # train, validation, test, by position


def define_flags():
    flags.DEFINE_string("data_file", None, "Local UTF-8 text file; default: pydoc_data.")
    flags.DEFINE_integer("seq_len", 32, "Characters per training window.")
    flags.DEFINE_integer("embedding_dim", 32, "Full embedding width.")
    flags.DEFINE_integer("units", 64, "Full hidden units of each LSTM layer.")
    flags.DEFINE_integer("steps", 300, "Training steps (batches), every model.")
    flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
    flags.DEFINE_float("learning_rate", 1e-2, "Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Random seed (weights, batches, rates).")
    flags.DEFINE_bool("baselines", True, "Also train a plain model per width.")
    flags.DEFINE_string("output_dir", "results_char_lm", "Where everything is written.")
    flags.DEFINE_string("results_file", None, "Results JSON; default OUTPUT_DIR/results.json.")
    flags.DEFINE_integer("curve_points", 10, "Validations along training (0: none).")
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")


def load_text(data_file=None):
    """The corpus: `data_file`, or every pydoc topic in name order."""
    if data_file:
        with open(data_file, encoding="utf-8") as f:
            return f.read()
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def split_text(text):
    """Train, validation and test text, cut by position (no shuffling)."""
    a = int(len(text) * SPLIT[0])
    b = int(len(text) * (SPLIT[0] + SPLIT[1]))
    return text[:a], text[a:b], text[b:]


def vocabulary(train_text):
    """Characters of the training text; id 0 stands for any other."""
    return {c: i + 1 for i, c in enumerate(sorted(set(train_text)))}


def windows(text, vocab, seq_len):
    """Non-overlapping `(inputs, next characters)` windows of `seq_len`."""
    ids = np.array([vocab.get(c, 0) for c in text], dtype="int32")
    count = (len(ids) - 1) // seq_len
    x = ids[: count * seq_len].reshape(count, seq_len)
    y = ids[1 : count * seq_len + 1].reshape(count, seq_len)
    return x, y


def sliced_lm(vocab_size, seq_len, embedding_dim, units, rates=DEFAULT_RATES, seed=0):
    """Embedding - LSTM - LSTM - softmax layer, every width sliced."""
    ids = keras.Input((seq_len,), dtype="int32", name="characters")
    rate = keras_slicing.rate_input()
    h = layers.SlicedEmbedding(vocab_size, embedding_dim, name="embedding")(ids, rate)
    h = layers.SlicedLSTM(units, return_sequences=True, name="lstm_1")(h, rate)
    h = layers.SlicedLSTM(units, return_sequences=True, name="lstm_2")(h, rate)
    # The softmax layer reads the sliced hidden state and predicts every character.
    logits = layers.SlicedDense(vocab_size, slice_output=False, name="logits")(h, rate)
    return keras_slicing.SlicingModel(
        [ids, rate], logits, rates=rates, scheduler="random_min_max",
        num_random=_num_random(rates), rate_loss_weights=[1.0] * len(rates),
        seed=seed, name="char_lm",
    )


def _num_random(rates):
    """random_min_max's extra rates: one, when there is a middle rate."""
    return min(1, max(0, len(rates) - 2))


def plain_lm(vocab_size, seq_len, embedding_dim, units, rate):
    """The same network built directly at the width of `rate`."""
    e, u = (active_width(w, rate, 8) for w in (embedding_dim, units))
    ids = keras.Input((seq_len,), dtype="int32", name="characters")
    h = keras.layers.Embedding(vocab_size, e)(ids)
    h = keras.layers.LSTM(u, return_sequences=True)(h)
    h = keras.layers.LSTM(u, return_sequences=True)(h)
    logits = keras.layers.Dense(vocab_size)(h)
    return keras.Model(ids, logits, name=f"plain_lm_{rate:g}")


def compile_lm(model, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate, global_clipnorm=5.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def bits_per_character(logits, targets):
    """Mean negative log2-likelihood of `targets` under `logits` (numpy)."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(np.mean(log_z - picked) / math.log(2))


def training_order(count, steps, batch_size, seed):
    """Window indices for `steps` batches: passes over the data, each shuffled."""
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    passes = [rng.permutation(count) for _ in range(-(-needed // count))]
    return np.concatenate(passes)[:needed]


class LearningCurve(keras.callbacks.Callback):
    """Records `evaluate()` (a dict of validation BPC) every `every` steps."""

    def __init__(self, evaluate, every):
        super().__init__()
        self.evaluate, self.every = evaluate, every
        self.steps, self.points, self._step = [], [], 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every and self._step % self.every == 0:
            self.steps.append(self._step)
            self.points.append(self.evaluate())

    def as_dict(self):
        return {"steps": self.steps, "val_bpc": self.points}


def _curve_every(steps, curve_points):
    return max(1, steps // curve_points) if curve_points else 0


def train_baselines(data, build_plain, batch_size, learning_rate, rates, seed,
                    validation=None, curve_points=0):
    """Test BPC of a plain model per width, and its learning curve if asked."""
    (x, y), (x_test, y_test) = data
    bpc, curves = {}, {}
    for rate in rates:
        keras.utils.set_random_seed(seed)
        model = compile_lm(build_plain(rate), learning_rate)
        curve = LearningCurve(
            lambda: bits_per_character(model.predict(validation[0], verbose=0), validation[1]),
            _curve_every(len(x) // batch_size, curve_points) if validation else 0,
        )
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=[curve])
        bpc[rate] = bits_per_character(model.predict(x_test, verbose=0), y_test)
        curves[rate] = curve.as_dict()
        print(f"  plain model at width {rate:g}: test BPC {bpc[rate]:.3f}")
    return (bpc, curves) if validation else bpc


def run(output_dir, data_file=None, seq_len=32, embedding_dim=32, units=64,
        steps=300, batch_size=32, learning_rate=1e-2, seed=0, baselines=True,
        rates=DEFAULT_RATES, verbose=1, results_file=None, curve_points=10):
    """The whole job; returns the results dictionary written to the results file."""
    sizes = {"embedding_dim": embedding_dim, "units": units}
    return run_language_model(
        output_dir,
        lambda vocab_size, rates: sliced_lm(
            vocab_size, seq_len, embedding_dim, units, rates, seed
        ),
        lambda vocab_size, rate: plain_lm(
            vocab_size, seq_len, embedding_dim, units, rate
        ),
        sizes, data_file, seq_len, steps, batch_size, learning_rate, seed,
        baselines, rates, verbose, results_file, curve_points,
    )


def run_language_model(output_dir, build_sliced, build_plain, sizes,
                       data_file, seq_len, steps, batch_size, learning_rate,
                       seed, baselines, rates, verbose, results_file=None,
                       curve_points=10):
    """Trains, exports and compares a sliced character model of any kind.

    `build_sliced(vocab_size, rates)` returns the `SlicingModel` and
    `build_plain(vocab_size, rate)` the plain model of one width; `sizes`
    is recorded in the results.
    """
    started = time.time()
    keras.utils.set_random_seed(seed)
    train_text, val_text, test_text = split_text(load_text(data_file))
    vocab = vocabulary(train_text)
    vocab_size = len(vocab) + 1
    x, y = windows(train_text, vocab, seq_len)
    passes = steps * batch_size / len(x)
    order = training_order(len(x), steps, batch_size, seed)
    x, y = x[order], y[order]
    x_val, y_val = windows(val_text, vocab, seq_len)
    x_test, y_test = windows(test_text, vocab, seq_len)
    source = data_file or "pydoc_data.topics"
    print(
        f"{source}: {len(train_text):,} / {len(val_text):,} / {len(test_text):,} "
        f"characters (train / validation / test), {vocab_size} symbols; "
        f"{steps} steps of {batch_size} windows of {seq_len} "
        f"({passes:.2f} passes over the training text)"
    )

    model = compile_lm(build_sliced(vocab_size, rates), learning_rate)
    feed = lambda data, rate: [data, np.full(len(data), rate, "float32")]  # noqa: E731
    curve = LearningCurve(
        lambda: {
            f"{rate:g}": bits_per_character(
                model.predict(feed(x_val, rate), verbose=0), y_val
            )
            for rate in model.rates
        },
        _curve_every(steps, curve_points),
    )
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False,
              verbose=verbose, callbacks=[curve])
    train_seconds = time.time() - started

    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, f"{model.name}.keras")
    model.save(model_path)
    bundle_dir = os.path.join(output_dir, "tflite")
    manifest = keras_slicing.export_tflite(model, bundle_dir)

    baseline = baseline_curves = None
    if baselines:
        print("\ntraining a plain model per width, same budget:")
        baseline, baseline_curves = train_baselines(
            ((x, y), (x_test, y_test)), lambda r: build_plain(vocab_size, r),
            batch_size, learning_rate, model.rates, seed,
            validation=(x_val, y_val), curve_points=curve_points,
        )

    rows = []
    for entry in manifest["rates"]:
        rate = entry["rate"]
        interpreter = load_interpreter(os.path.join(bundle_dir, entry["file"]))
        tflite_logits = np.concatenate([
            run_tflite(interpreter, x_test[i : i + 256])
            for i in range(0, len(x_test), 256)
        ])
        rows.append({
            "rate": rate,
            "params": entry["params"],
            "macs_per_char": entry["macs"] // seq_len,
            "val_bpc": bits_per_character(model.predict(feed(x_val, rate), verbose=0), y_val),
            "test_bpc": bits_per_character(model.predict(feed(x_test, rate), verbose=0), y_test),
            "tflite_test_bpc": bits_per_character(tflite_logits, y_test),
            "tflite_bytes": entry["bytes"],
            **({"baseline_test_bpc": baseline[rate]} if baseline else {}),
        })
    print_table(rows, model.name)
    results = {
        "data": f"{source}, split by position 90/5/5",
        "model": model.name,
        "seq_len": seq_len,
        **sizes,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "passes": round(passes, 3),
        "scheduler": "random_min_max",
        "machine": machine_facts(),
        "sliced_train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "widths": rows,
        "curve": curve.as_dict(),
        **({"baseline_curves": {f"{r:g}": c for r, c in baseline_curves.items()}}
           if baseline_curves else {}),
    }
    results_path = results_file or os.path.join(output_dir, "results.json")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    with open(results_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)
    print(f"\nmodel:    {model_path}")
    print(f"bundle:   {bundle_dir}/ (manifest.json + {len(rows)} .tflite files)")
    print(f"results:  {results_path}")
    print(f"finished in {results['seconds']:.0f} s")
    return results


def machine_facts():
    """Where the numbers were measured: CPUs, Python and library versions."""
    import platform

    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }


def print_table(rows, name):
    header = ["width", "params", "MACs/char", "val BPC", "test BPC",
              "TFLite test BPC", "bytes"]
    if "baseline_test_bpc" in rows[0]:
        header.append("plain model test BPC")
    lines = [header]
    for r in rows:
        line = [f"{r['rate']:g}", f"{r['params']:,}", f"{r['macs_per_char']:,}",
                f"{r['val_bpc']:.3f}", f"{r['test_bpc']:.3f}",
                f"{r['tflite_test_bpc']:.3f}", f"{r['tflite_bytes']:,}"]
        if "baseline_test_bpc" in r:
            line.append(f"{r['baseline_test_bpc']:.3f}")
        lines.append(line)
    widths = [max(len(c) for c in column) for column in zip(*lines)]
    print(f"\none sliced model ({name}), every width (bits per character):")
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the converter logs every file
    run(FLAGS.output_dir, FLAGS.data_file, FLAGS.seq_len, FLAGS.embedding_dim,
        FLAGS.units, FLAGS.steps, FLAGS.batch_size, FLAGS.learning_rate,
        FLAGS.seed, FLAGS.baselines, verbose=FLAGS.verbose,
        results_file=FLAGS.results_file, curve_points=FLAGS.curve_points)


if __name__ == "__main__":
    define_flags()
    app.run(main)
