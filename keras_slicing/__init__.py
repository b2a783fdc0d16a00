"""keras-slicing: model slicing for Keras 3.

One network, every width: sliced layers compute only the first
`ceil(r * slice_groups)` groups of their units at slice rate `r`, so a single
set of weights serves any cost budget (Cai et al., PVLDB 13(2), 2020).
"""

from keras_slicing import callbacks
from keras_slicing import layers
from keras_slicing import schedulers
from keras_slicing.calibration import calibrate_batchnorm
from keras_slicing.conversion import SlicingPlan
from keras_slicing.conversion import slice_model
from keras_slicing.checks import check_model
from keras_slicing.cost import model_cost
from keras_slicing.extract import extract_submodel
from keras_slicing.mixed_widths import MixedWidthScheduler
from keras_slicing.model import SlicingModel
from keras_slicing.rates import rate_input
from keras_slicing.search import search_widths
from keras_slicing.widths import WidthConfig
from keras_slicing.widths import width_groups

__version__ = "0.1.0"


def __getattr__(name):
    # TFLite export needs TensorFlow: imported on first use, so that the
    # package imports on the JAX and PyTorch backends without it.
    if name == "export_tflite":
        from keras_slicing.export import export_tflite

        return export_tflite
    raise AttributeError(f"module 'keras_slicing' has no attribute {name!r}")


__all__ = [
    "MixedWidthScheduler",
    "SlicingModel",
    "SlicingPlan",
    "WidthConfig",
    "calibrate_batchnorm",
    "callbacks",
    "check_model",
    "export_tflite",
    "extract_submodel",
    "layers",
    "model_cost",
    "rate_input",
    "schedulers",
    "search_widths",
    "slice_model",
    "width_groups",
]
