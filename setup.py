"""keras-slicing: model slicing (dynamic-width networks) for Keras 3."""

import pathlib
import re

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "keras_slicing" / "__init__.py").read_text()
).group(1)

setup(
    name="keras-slicing",
    version=VERSION,
    description=(
        "Model slicing for Keras 3: one network, every width, and a TFLite "
        "bundle per width for phones."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The host reads bundle manifests and output kinds with the edge
    # package's own TensorFlow-free modules: it depends on that package,
    # the one distribution that installs it (./tflite, `pip install ./tflite`
    # alone gives the edge runtime). It is not published on an index:
    # install both from the checkout, `pip install ./tflite .`.
    packages=find_packages(include=["keras_slicing", "keras_slicing.*"]),
    # The command line, outside the package so that `keras-slicing info`
    # starts without importing Keras and TensorFlow.
    py_modules=["keras_slicing_cli"],
    # TensorFlow comes through an extra: `tensorflow-cpu` and the CUDA build
    # are different distributions, and a plain `tensorflow` requirement would
    # pull the large wheel on top of a CPU install.
    # flatbuffers: tflite_flatbuffer.py reads and edits converted models.
    install_requires=[
        "keras>=3.5", "absl-py>=2.0", "numpy>=1.26", "flatbuffers>=23.5",
        "keras-slicing-lite",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16"],
        "cuda": ["tensorflow[and-cuda]>=2.16"],
        # LiteRT and the HTTP front end come with the edge package; these
        # name its extras from here.
        "lite": ["keras-slicing-lite"],
        "serve": ["keras-slicing-lite[serve]"],
        # Other Keras backends (KERAS_BACKEND=jax or torch): the layers, the
        # rate contract, model_cost, extract_submodel and .keras files.
        # PyTorch's Linux wheels on PyPI are CUDA builds of several GB; install
        # its CPU build first where that is all you need (the Makefile does).
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.2"],
        "dev": [
            "pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.3", "matplotlib>=3.7",
            "mnist1d>=0.0.2", "hypothesis>=6.100", "tritonclient[http]>=2.40",
            "keras-slicing-lite[serve]",
        ],
        # The documentation site (`make docs`): MkDocs, its material theme and
        # the API reference generated from the docstrings.
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings-python>=1.10"],
    },
    entry_points={
        "console_scripts": [
            "keras-slicing=keras_slicing_cli:run",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
