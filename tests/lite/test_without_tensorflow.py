"""The edge package in a fresh interpreter where TensorFlow cannot be imported."""

import pathlib
import subprocess
import sys
import textwrap

import numpy as np

LITE_DIR = pathlib.Path(__file__).parents[2] / "tflite"

BLOCKER = """
import importlib.abc
import sys

class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"blocked for this test: {name}")
        return None

def block(*names):
    for module in list(sys.modules):
        if module.split(".")[0] in names:
            del sys.modules[module]
    sys.meta_path.insert(0, Blocker(names))
"""


def _run(script, tmp_path, *args):
    path = tmp_path / "script.py"
    path.write_text(BLOCKER + textwrap.dedent(script))
    result = subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(LITE_DIR), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_load_and_predict_work_without_tensorflow(bundle_dir, reference, tmp_path):
    x, expected = reference
    np.save(tmp_path / "x.npy", x)
    script = """
        block("tensorflow", "keras", "keras_slicing", "tf_keras")
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("the import block did not work")
        import numpy as np
        import keras_slicing_lite
        import keras_slicing_lite.asgi_server
        import keras_slicing_lite.cli

        bundle = keras_slicing_lite.load_bundle(sys.argv[1])
        np.save("out.npy", bundle.predict(np.load("x.npy"), rate=0.5))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("tensorflow", "keras", "keras_slicing"))
        print(keras_slicing_lite.runtime_name(), loaded)
    """
    assert _run(script, tmp_path, bundle_dir) == "ai_edge_litert []"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected[0.5], atol=1e-5)


def test_tflite_runtime_is_the_fallback(bundle_dir, reference, tmp_path):
    x, expected = reference
    np.save(tmp_path / "x.npy", x)
    # A stand-in tflite_runtime wrapping LiteRT's interpreter class, then
    # LiteRT itself made unimportable: the package must pick the fallback.
    script = """
        import types
        from ai_edge_litert.interpreter import Interpreter as LiteRT

        class Interpreter(LiteRT):
            pass

        package = types.ModuleType("tflite_runtime")
        module = types.ModuleType("tflite_runtime.interpreter")
        module.Interpreter = Interpreter
        package.interpreter = module
        sys.modules.update({"tflite_runtime": package,
                            "tflite_runtime.interpreter": module})
        block("ai_edge_litert", "tensorflow")
        import numpy as np
        import keras_slicing_lite

        bundle = keras_slicing_lite.load_bundle(sys.argv[1])
        np.save("out.npy", bundle.predict(np.load("x.npy"), rate=0.25))
        print(keras_slicing_lite.runtime_name())
    """
    assert _run(script, tmp_path, bundle_dir) == "tflite_runtime"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected[0.25], atol=1e-5)


def test_missing_interpreter_says_what_to_install(bundle_dir, tmp_path):
    script = """
        block("ai_edge_litert", "tflite_runtime", "tensorflow")
        import keras_slicing_lite

        try:
            keras_slicing_lite.load_bundle(sys.argv[1])
        except ImportError as error:
            print("pip install ai-edge-litert" in str(error))
    """
    assert _run(script, tmp_path, bundle_dir) == "True"
