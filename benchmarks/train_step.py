"""Sliced ResNet-20 per backend, side by side with a plain PyTorch reference.

Prints two tables and writes benchmarks/results/train_step.json.

    python benchmarks/train_step.py [--backends tensorflow,jax,torch]
        [--repeats 5] [--batch 128] [--quick]

The model is `examples/cifar10_resnet.py`'s sliced pre-activation ResNet-20
(32x32x3, batch 128, group norm); the reference is the same network written
in plain PyTorch from the paper's description (`benchmarks/torch_reference.py`).
Measured:
- forward+backward of one width, rate a static Python float
  (`SlicingModel.at_rate(r)`): TensorFlow one `tf.function` per width; JAX
  `stateless_call` under `jax.value_and_grad`, one `jax.jit` per width;
  PyTorch backend eager; the reference eager. The ratio to r = 1 is the
  column to compare with the MACs ratio.
- one `random_min_max` training step (widest + narrowest + one random
  width, losses summed, one SGD update): `SlicingModel.train_on_batch`
  compiled by default and with `jit_compile=True` (XLA on TensorFlow and
  JAX; on PyTorch each width's forward pass captured by `torch.compile`'s
  `"eager"` backend);
  the reference's `RandomMinMaxStep`. A path that fails reports
  "n/a: <error>".

Each backend runs in its own interpreter (one Keras backend per process).
All workers are started first (one after the other, so the first-call times
are not shared), then the parent asks them in turn for one timed round each:
a slow phase of a shared machine then falls on every backend alike, and the
medians of the rounds are reported. The step table also gives the median
over rounds of each round's ratio to the reference's step, which cancels
the machine's slower phases better than the ratio of the medians.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402

flags.DEFINE_string("backends", "tensorflow,jax,torch", "Comma-separated Keras backends.")
flags.DEFINE_boolean("reference", True, "Also time the plain PyTorch reference.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("depth", 20, "ResNet depth, 6n+2.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (interleaved over backends).")
flags.DEFINE_boolean("jit", True, "Also time train_on_batch with jit_compile=True.")
flags.DEFINE_integer(
    "threads", 0, "Compute threads per worker on every backend (0: each library's default)."
)
flags.DEFINE_boolean("quick", False, "Smoke run: batch 16, depth 8, 2 rounds, no jit_compile.")
flags.DEFINE_string("worker", None, "Internal: serve timings of this backend or 'reference'.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)
REFERENCE = "reference"
# A random_min_max step runs one of two rate sets: with jit_compile, warm-up
# steps enough to meet both (and compile each) almost surely.
WARMUP_JIT_STEPS = 6


def _fb(rate):
    return f"fb {rate:g}"


# ------------------------------------------------------------------ workers


def _load_example(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keras_candidates(batch, depth, jit):
    """Timed callables of this process's Keras backend, and their errors."""
    import keras
    import numpy as np

    from keras_slicing import model_cost

    backend = keras.backend.backend()
    resnet = _load_example("cifar10_resnet")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(batch,)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    model = resnet.preact_resnet(depth, seed=0)
    full = model_cost(model, 1.0)["macs"]
    info = {"macs": {str(r): model_cost(model, r)["macs"] / full for r in RATES}}

    make = {"tensorflow": _tf_fb, "jax": _jax_fb, "torch": _torch_fb}[backend]
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    candidates = {_fb(r): make(model.at_rate(r), loss, xt, yt) for r in RATES}

    variants = {"step": None}
    if jit:
        variants["step jit_compile"] = True
    for name, jit_compile in variants.items():
        keras.utils.set_random_seed(0)
        step_model = resnet.preact_resnet(depth, seed=0)
        kwargs = {} if jit_compile is None else {"jit_compile": jit_compile}
        step_model.compile(
            keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss, **kwargs
        )
        candidates[name] = (
            lambda m=step_model: m.train_on_batch(x, y, return_dict=True)
        )
    return candidates, info


def _tf_fb(model, loss, x, y):
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return value, tape.gradient(value, variables)

    return lambda: step(x, y)


def _jax_fb(model, loss, x, y):
    import jax

    def loss_fn(trainable, non_trainable, x, y):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss(y, logits)

    step = jax.jit(jax.value_and_grad(loss_fn))
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return lambda: jax.block_until_ready(step(trainable, non_trainable, x, y))


def _torch_fb(model, loss, x, y):
    import torch

    params = [v.value for v in model.trainable_variables]

    def step():
        value = loss(y, model(x, training=True))
        return value, torch.autograd.grad(value, params)

    return step


def _reference_candidates(batch, depth):
    import numpy as np
    import torch
    from torch.nn import functional as F

    from benchmarks import torch_reference

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, 3, 32, 32)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, 10, size=(batch,)))
    model = torch_reference.PreActResNet(depth)
    params = list(model.parameters())

    def fb(rate):
        def run():
            value = F.cross_entropy(model(x, rate), y)
            return value, torch.autograd.grad(value, params)

        return run

    candidates = {_fb(r): fb(r) for r in RATES}
    step = torch_reference.RandomMinMaxStep(torch_reference.PreActResNet(depth))
    candidates["step"] = lambda: step(x, y)
    return candidates, {}


def _versions():
    import importlib

    versions = {}
    for name in ("keras", "tensorflow", "jax", "torch"):
        module = sys.modules.get(name)
        if module is None and name == "torch":
            module = importlib.import_module(name)
        if module is not None:
            versions[name] = module.__version__
    return versions


def _limit_threads(name, threads):
    """Sets the compute threads of this worker's library, before it starts.

    On a shared machine, one thread per worker keeps a backend that waits
    at a barrier for a descheduled thread (PyTorch's OpenMP) from being
    timed on the scheduler rather than on its kernels.
    """
    backend = "torch" if name == REFERENCE else name
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "jax" and threads == 1:  # XLA:CPU has no thread count flag
        flags_ = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = flags_ + " --xla_cpu_multi_thread_eigen=false"


def serve(name):
    """Builds and warms up the candidates, then times one round per request.

    Replies are JSON lines on the original stdout; everything the libraries
    print goes to stderr.
    """
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    if FLAGS.threads:
        _limit_threads(name, FLAGS.threads)
    start = time.perf_counter()
    if name == REFERENCE:
        built, info = _reference_candidates(FLAGS.batch, FLAGS.depth)
    else:
        built, info = _keras_candidates(FLAGS.batch, FLAGS.depth, FLAGS.jit)
    candidates, errors, first_call = {}, {}, {}
    for key, fn in built.items():
        begin = time.perf_counter()
        try:
            for _ in range(WARMUP_JIT_STEPS if key.endswith("jit_compile") else 2):
                fn()
        except Exception as error:  # reported, not fatal: a path may not exist yet
            errors[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        first_call[key] = time.perf_counter() - begin
        candidates[key] = fn
    info.update(
        candidates=list(candidates), errors=errors, warmup_s=first_call,
        setup_s=time.perf_counter() - start, versions=_versions(),
    )
    reply.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        if line.strip() != "round":
            break
        times = {}
        for key, fn in candidates.items():
            begin = time.perf_counter()
            fn()
            times[key] = time.perf_counter() - begin
        reply.write(json.dumps(times) + "\n")


# ------------------------------------------------------------------- parent


def _start(name):
    env = dict(os.environ, KERAS_BACKEND="torch" if name == REFERENCE else name)
    args = [f"--worker={name}", f"--batch={FLAGS.batch}", f"--depth={FLAGS.depth}",
            f"--jit={FLAGS.jit}", f"--threads={FLAGS.threads}"]
    process = subprocess.Popen(
        [sys.executable, __file__, *args], env=env, cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {name} exited with {process.wait()} before timing")
    return process, json.loads(line)


def _round(process):
    process.stdin.write("round\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def _cell(result, key, base=None):
    if key in result["errors"]:
        return "n/a: " + result["errors"][key]
    if key not in result["ms"]:
        return "-"
    ms = result["ms"][key]
    return f"{ms:.0f} ({ms / base:.2f}x)" if base else f"{ms:.0f}"


def main(_):
    if FLAGS.quick:
        FLAGS.batch, FLAGS.depth, FLAGS.repeats, FLAGS.jit = 16, 8, 2, False
    if FLAGS.worker:
        serve(FLAGS.worker)
        return
    import statistics

    names = [b for b in FLAGS.backends.split(",") if b]
    if FLAGS.reference:
        names.append(REFERENCE)
    workers, results = {}, {}
    for name in names:
        start = time.perf_counter()
        workers[name], results[name] = _start(name)
        print(f"{name}: ready in {time.perf_counter() - start:.0f} s, "
              f"errors: {results[name]['errors'] or 'none'}", flush=True)
    samples = {name: {} for name in names}
    for _ in range(FLAGS.repeats):
        for name, process in workers.items():
            for key, seconds in _round(process).items():
                samples[name].setdefault(key, []).append(seconds * 1e3)
    for name, process in workers.items():
        process.stdin.close()
        process.wait()
        results[name]["ms"] = {k: statistics.median(v) for k, v in samples[name].items()}
        results[name]["samples_ms"] = samples[name]

    macs = next((r["macs"] for r in results.values() if "macs" in r), None)
    shape = f"batch {FLAGS.batch}, 32x32x3, ResNet-{FLAGS.depth}"
    rows = []
    for rate in RATES:
        row = [f"{rate:g}"]
        for name in names:
            row.append(_cell(results[name], _fb(rate), results[name]["ms"].get(_fb(1.0))))
        row.append(f"{macs[str(rate)]:.3f}" if macs else "")
        rows.append(row)
    common.print_table(
        f"forward+backward of one width, ms (x r=1); {shape}, medians of "
        f"{FLAGS.repeats} interleaved rounds",
        ["rate", *names, "MACs x r=1"], rows,
    )
    reference = results.get(REFERENCE, {}).get("ms", {}).get("step")
    reference_rounds = samples.get(REFERENCE, {}).get("step")
    rows = []
    for name in names:
        for key in ("step", "step jit_compile"):
            result = results[name]
            if key not in result["ms"] and key not in result["errors"]:
                continue
            cell = _cell(result, key)
            ratio = paired = ""
            if key in result["ms"] and reference:
                ratio = f"{result['ms'][key] / reference:.2f}"
                # Each round times every worker back to back, so the ratio
                # within a round cancels the machine's slower phases.
                paired = statistics.median(
                    a / b for a, b in zip(samples[name][key], reference_rounds)
                )
                result.setdefault("paired_ratio", {})[key] = paired
                paired = f"{paired:.2f}"
            label = "RandomMinMaxStep" if name == REFERENCE else (
                "train_on_batch" + (", jit_compile=True" if "jit" in key else ""))
            rows.append([name, label, cell, ratio, paired])
    common.print_table(
        f"one random_min_max training step (3 widths, one SGD update), ms; {shape}",
        ["backend", "path", "ms", "x reference", "x reference, per round"], rows,
    )
    facts = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    common.write_json(
        "train_step",
        {
            "machine": facts,
            "flags": {k: FLAGS[k].value for k in
                      ("batch", "depth", "repeats", "jit", "threads", "quick")},
            "rates": RATES,
            "results": results,
        },
        FLAGS.output,
    )


if __name__ == "__main__":
    app.run(main)
