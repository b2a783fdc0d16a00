"""keras-slicing-lite: run a keras-slicing TFLite bundle without TensorFlow.

A bundle holds one TFLite model per width of a sliced network. This package
verifies and loads it with LiteRT (or the legacy `tflite_runtime`), measures
each width's latency on the device, and chooses the width per call or per
batch to fit a latency or MAC budget (Cai et al., PVLDB 13(2), 2020), and
serves it over HTTP (`keras-slicing-lite serve BUNDLE`; `ASGIFrontEnd` on
uvicorn with the `serve` extra, `HTTPFrontEnd` on the standard library).
"""

from keras_slicing_lite.bundle import Bundle
from keras_slicing_lite.cascade import CascadeResult
from keras_slicing_lite.bundle import load_bundle
from keras_slicing_lite.elastic_server import ElasticServer
from keras_slicing_lite.http_server import HTTPFrontEnd
from keras_slicing_lite.latency_profile import LatencyProfile
from keras_slicing_lite.elastic_server import BatchTooLargeError
from keras_slicing_lite.elastic_server import QueueFullError
from keras_slicing_lite.elastic_server import ServerFailedError
from keras_slicing_lite.elastic_server import ServerStoppedError
from keras_slicing_lite.manifest import BundleError
from keras_slicing_lite.manifest import read_manifest
from keras_slicing_lite.request import Request
from keras_slicing_lite.request import Response
from keras_slicing_lite.runtime import runtime_name

__version__ = "0.1.0"

__all__ = [
    "BatchTooLargeError",
    "Bundle",
    "BundleError",
    "CascadeResult",
    "ElasticServer",
    "HTTPFrontEnd",
    "LatencyProfile",
    "QueueFullError",
    "Request",
    "Response",
    "ServerFailedError",
    "ServerStoppedError",
    "load_bundle",
    "read_manifest",
    "runtime_name",
]


def __getattr__(name):
    # The uvicorn front end needs the `serve` extra; the edge core does not.
    if name == "ASGIFrontEnd":
        from keras_slicing_lite.asgi_server import ASGIFrontEnd

        return ASGIFrontEnd
    raise AttributeError(f"module 'keras_slicing_lite' has no attribute {name!r}")
