"""Imports an example script as a module, once per process."""

import functools
import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def load_example(name):
    # The scripts define absl flags only under __main__, but importing one
    # twice would still build two copies of its module: load it once.
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
