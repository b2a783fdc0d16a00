"""Which modules a part of the package loads: the arrows run one way."""

import json
import pathlib
import subprocess
import sys

import keras

import keras_slicing

PACKAGE_DIR = pathlib.Path(keras_slicing.__file__).parent

# `keras_slicing/__init__.py` re-exports `SlicingModel` (a saved model needs
# its class registered once the package is imported), so it loads the
# trainers itself. The layers are checked below it: the parent package is
# installed as a bare namespace, and only what the layers import is loaded.
_LOAD_LAYERS = f"""
import json, sys, types
package = types.ModuleType("keras_slicing")
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["keras_slicing"] = package
import keras_slicing.layers
print(json.dumps(sorted(m for m in sys.modules if m.startswith("keras_slicing"))))
"""


def _modules_loaded_by_layers():
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_LAYERS],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loading_the_layers_loads_neither_trainers_nor_model():
    loaded = _modules_loaded_by_layers()
    assert "keras_slicing.layers.dense" in loaded  # the layers did load
    assert "keras_slicing.backend" in loaded
    unwanted = [
        m for m in loaded
        if m.startswith(("keras_slicing.trainers", "keras_slicing.train_step"))
        or m in ("keras_slicing.model", "keras_slicing.compiling")
    ]
    assert unwanted == []


# A Keras without one private method keras_slicing relies on: importing the
# package must fail there, naming the Keras version, not misbehave later.
_WITHOUT_RUN_THROUGH_GRAPH = """
from keras.src.ops.function import Function
del Function._run_through_graph
import keras_slicing
"""


def test_a_moved_private_keras_api_fails_the_import_naming_the_version():
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RUN_THROUGH_GRAPH],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError")
    assert "_run_through_graph" in last and f"keras {keras.__version__}" in last
