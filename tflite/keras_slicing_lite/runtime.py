"""The TFLite interpreter: LiteRT first, the legacy `tflite_runtime` second.

The one place that imports an interpreter, so the rest of the package never
depends on which one is installed. TensorFlow's own `tf.lite.Interpreter` is
deliberately not a fallback: this package must run where TensorFlow is absent.
"""

import os

RUNTIME_ENV = "KERAS_SLICING_LITE_RUNTIME"
RUNTIMES = ("ai_edge_litert", "tflite_runtime")


def _import_interpreter_class(name):
    if name == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


def _resolve():
    forced = os.environ.get(RUNTIME_ENV)
    if forced:
        if forced not in RUNTIMES:
            raise ValueError(
                f"{RUNTIME_ENV} must name one of {', '.join(RUNTIMES)}. "
                f"Received: {RUNTIME_ENV}={forced!r}"
            )
        candidates = (forced,)
    else:
        candidates = RUNTIMES
    failures = []
    for name in candidates:
        try:
            return name, _import_interpreter_class(name)
        except ImportError as error:
            failures.append(f"{name}: {error}")
    raise ImportError(
        "keras_slicing_lite needs a TFLite interpreter: `pip install "
        "ai-edge-litert` (or, on boards without LiteRT wheels, `pip install "
        "tflite-runtime 'numpy<2'`). Import attempts failed with: "
        + "; ".join(failures)
    )


_RESOLVED = None


def _interpreter_class():
    global _RESOLVED
    if _RESOLVED is None:
        _RESOLVED = _resolve()
    return _RESOLVED


def runtime_name():
    """`"ai_edge_litert"` or `"tflite_runtime"`: the interpreter in use."""
    return _interpreter_class()[0]


def runtime_version():
    """The installed version of the interpreter package, or `"unknown"`."""
    from importlib import metadata

    distribution = {
        "ai_edge_litert": "ai-edge-litert",
        "tflite_runtime": "tflite-runtime",
    }[runtime_name()]
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def make_interpreter(model_content, num_threads=None):
    """An interpreter for a `.tflite` flatbuffer held in memory.

    Loading from the bytes that were hashed (not from the path again) means
    the verified content is exactly what runs.
    """
    _, interpreter_class = _interpreter_class()
    kwargs = {"model_content": model_content}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    return interpreter_class(**kwargs)
