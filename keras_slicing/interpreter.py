"""Running `.tflite` files on the host, for checks, accuracy and latency.

Phones run the files with their own LiteRT runtime; on the host the first
available interpreter is used: `ai_edge_litert` (LiteRT), then the legacy
`tflite_runtime` (which cannot run dynamic-range files from recent
converters), then `tf.lite.Interpreter`.
"""

import time

import numpy as np


def load_interpreter(model_path=None, model_content=None, num_threads=None):
    """A LiteRT interpreter of one `.tflite` file, tensors allocated.

    Args:
        model_path: Path of a `.tflite` file.
        model_content: The file's bytes, instead of `model_path`.
        num_threads: Threads of the CPU kernels; `None` lets LiteRT choose.

    Returns:
        An `Interpreter` of `ai_edge_litert`, `tflite_runtime` or `tf.lite`.
    """
    if (model_path is None) == (model_content is None):
        raise ValueError(
            "load_interpreter: pass exactly one of model_path and "
            f"model_content. Received: model_path={model_path!r}, "
            f"model_content={'<bytes>' if model_content else model_content!r}"
        )
    interpreter = _interpreter_class()(
        model_path=None if model_path is None else str(model_path),
        model_content=model_content,
        num_threads=num_threads,
    )
    interpreter.allocate_tensors()
    return interpreter


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
    return Interpreter


def run_tflite(interpreter, x):
    """Runs a one-input, one-output interpreter on a whole batch `x`.

    The batch dimension is resized to `len(x)`; an integer input is
    quantized and an integer output dequantized with the tensors' own scale
    and zero point, so float data goes in and float results come out for
    every quantization.

    Returns:
        The output as a float32 numpy array.
    """
    (input_detail,) = interpreter.get_input_details()
    x = np.asarray(x)
    if tuple(input_detail["shape"]) != x.shape:
        interpreter.resize_tensor_input(input_detail["index"], x.shape)
        interpreter.allocate_tensors()
        (input_detail,) = interpreter.get_input_details()
    dtype = np.dtype(input_detail["dtype"])
    scale, zero_point = input_detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:  # not token ids
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
    interpreter.set_tensor(input_detail["index"], x.astype(dtype))
    interpreter.invoke()
    (output_detail,) = interpreter.get_output_details()
    y = interpreter.get_tensor(output_detail["index"])
    scale, zero_point = output_detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        y = (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def set_random_input(interpreter, batch_size=1, seed=0):
    """Resizes the batch to `batch_size` and sets a random input of its dtype.

    Latency does not depend on the values, only on shapes and types.
    """
    (detail,) = interpreter.get_input_details()
    x = _random_input(detail, batch_size, seed)
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)


class SignatureCall:
    """One signature of a file on a random input, timed like an interpreter.

    `invoke()` runs the signature runner (setting the input, invoking its
    subgraph, reading the output), so `latency_rounds` can time a signature
    of a single-file bundle; time the whole files it is compared with the
    same way, through their one signature (`key=None`), so that both sides
    pay the same Python overhead.

    Args:
        interpreter: The file's interpreter.
        key: The signature; `None` for a file's only one.
        batch_size: Examples in the input.
        x: The input, instead of a random one.
    """

    def __init__(self, interpreter, key=None, batch_size=1, x=None):
        self._runner = interpreter.get_signature_runner(key)
        ((self._name, detail),) = self._runner.get_input_details().items()
        self._x = _random_input(detail, batch_size) if x is None else x

    def invoke(self):
        """Runs the signature; returns `{output name: array}`."""
        return self._runner(**{self._name: self._x})


def _random_input(detail, batch_size, seed=0):
    shape = (batch_size, *[int(d) for d in detail["shape_signature"][1:]])
    dtype = np.dtype(detail["dtype"])
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer) and not detail["quantization"][0]:
        x = np.zeros(shape)  # token ids: any valid id costs the same
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True)
    else:
        x = rng.random(shape)
    return x.astype(dtype)


def time_invoke(interpreter, number, clock=time.perf_counter):
    """Seconds per `invoke()`, averaged over `number` calls on set inputs.

    `clock` is wall time by default; `time.thread_time` counts only the CPU
    time of the calling thread, which other jobs of a busy machine do not
    inflate (valid for single-threaded interpreters).
    """
    start = clock()
    for _ in range(number):
        interpreter.invoke()
    return (clock() - start) / number


def measure_latencies(interpreters, repeats=15, min_seconds=0.02):
    """Median seconds per `invoke()` of each interpreter, on inputs set.

    See `latency_rounds`; returns one median per interpreter.
    """
    rounds = latency_rounds(interpreters, repeats, min_seconds)
    return [float(np.median(times)) for times in rounds]


def latency_rounds(
    interpreters, repeats=15, min_seconds=0.02, clock=time.perf_counter, seed=0
):
    """Seconds per `invoke()` of each interpreter in each timing round.

    Rounds are interleaved (every interpreter once per round), so a change
    of machine load affects all of them alike and their ratios stay fair.
    Each round runs them in a fresh random order: in a fixed order reversed
    every other round, the interpreters at the ends of the list ran twice
    in a row and timed faster, and each one always followed the same
    neighbours. Each timing starts with one untimed call, because the first
    call after another model finds that model's weights in the caches (1.5
    to 1.7 times a repeated call for DenseNet121's files,
    `benchmarks/densenet_latency_cause.py`); the timed calls are those of a
    model called again and again. Each timing averages enough calls to
    last about `min_seconds`.

    Args:
        interpreters: Objects with an `invoke()` method, inputs set.
        repeats: Timing rounds.
        min_seconds: Approximate duration of each timing.
        clock: The clock, e.g. `time.thread_time` (see `time_invoke`).
        seed: Seed of the rounds' orders.

    Returns:
        One list of `repeats` timings per interpreter.
    """
    numbers = []
    for interpreter in interpreters:
        for _ in range(3):  # warm-up: first calls allocate and pack weights
            interpreter.invoke()
        single = time_invoke(interpreter, 5, clock)
        numbers.append(max(1, int(min_seconds / max(single, 1e-7))))
    rounds = [[] for _ in interpreters]
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for i in rng.permutation(len(interpreters)):
            interpreters[i].invoke()
            rounds[i].append(time_invoke(interpreters[i], numbers[i], clock))
    return rounds
