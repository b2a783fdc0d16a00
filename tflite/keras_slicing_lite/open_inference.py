"""The Open Inference Protocol (KServe v2) over HTTP, beside `/predict`.

Clients written for KServe, Triton or Seldon (e.g. `tritonclient.http`)
talk to the bundle through these paths:

- `GET /v2/health/live`, `GET /v2/health/ready`: 200 (ready while the
  server runs, else 503);
- `GET /v2`: server metadata;
- `GET /v2/models/{name}` (metadata: one input, one output, their
  datatypes and shapes, `-1` for the batch), `GET /v2/models/{name}/ready`;
- `POST /v2/models/{name}/infer`: one input tensor holding a batch, as JSON
  `data` (flat, row-major, or nested) or as binary data after a JSON header
  (`Inference-Header-Content-Length`, the protocol's binary extension).
  Request `parameters` may hold `rate` (a width of the bundle; without it
  the server chooses per example) and `deadline_ms`. The response's
  `parameters` say which width answered: `rates` (comma-separated, one per
  example), `rate` when one width answered all, `late` (0/1 per example)
  and `output_kind`. Outputs come as JSON `data`, or as binary data when
  the request asks (`binary_data_output`, or `binary_data` on an output).
"""

import json
import math

import numpy as np

from keras_slicing_lite import http_body
from keras_slicing_lite.http_reply import Reply
from keras_slicing_lite.http_reply import json_reply

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Open Inference datatypes and the NumPy dtypes they carry (little-endian).
DATATYPES = {
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64",
}
REQUEST_PARAMETERS = ("rate", "deadline_ms", "binary_data_output")


class OpenInference:
    """The `/v2` endpoints of a `ServingAPI`.

    Args:
        api: The `ServingAPI` whose server answers.
        model_name: The model's name in the paths.
    """

    def __init__(self, api, model_name):
        self.api = api
        self.model_name = str(model_name)
        self._dtype_names = {v: k for k, v in DATATYPES.items()}

    def route(self, method, path, query, headers, body, received_s):
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if parts in (["health", "live"], ["health", "ready"], []):
            self._method(method, "GET")
            if parts == ["health", "ready"] and not self.api.server.running:
                return json_reply(503, {"ready": False})
            if not parts:
                return json_reply(200, {"name": "keras-slicing-lite", "version": "2",
                                        "extensions": ["binary_tensor_data"]})
            return json_reply(200, {"live" if parts[1] == "live" else "ready": True})
        if len(parts) >= 2 and parts[0] == "models":
            if parts[1] != self.model_name:
                raise http_body.ClientError(
                    f"no model named {parts[1][:80]!r}; this server has "
                    f"{self.model_name!r}.", "model_name", 404,
                )
            if len(parts) == 2:
                self._method(method, "GET")
                return json_reply(200, self.metadata())
            if parts[2:] == ["ready"]:
                self._method(method, "GET")
                return json_reply(200 if self.api.server.running else 503,
                                  {"name": self.model_name, "ready": self.api.server.running})
            if parts[2:] == ["infer"]:
                self._method(method, "POST")
                return self.infer(query, headers, body, received_s)
        raise http_body.ClientError(
            f"no such path {path[:80]!r}; the Open Inference paths are /v2, "
            "/v2/health/live, /v2/health/ready, /v2/models/{name}, "
            "/v2/models/{name}/ready and /v2/models/{name}/infer.", "path", 404,
        )

    def metadata(self):
        bundle = self.api.bundle
        return {
            "name": self.model_name,
            "versions": ["1"],
            "platform": "tflite",
            "inputs": [{
                "name": INPUT_NAME,
                "datatype": self._dtype_names[bundle.input_dtype],
                "shape": [-1 if d is None else d for d in bundle.input_shape],
            }],
            "outputs": [{
                "name": OUTPUT_NAME,
                "datatype": "FP32",
                "shape": [-1 if d is None else d for d in bundle.output_shape],
            }],
            "parameters": {
                "rates": ",".join(format(r, "g") for r in self.api.server.rates),
                "output_kind": bundle.output_kind,
            },
        }

    def infer(self, query, headers, body, received_s):
        if query:
            raise http_body.ClientError(
                "the Open Inference infer path takes no query string; put rate "
                "and deadline_ms in the request's parameters.", "query",
            )
        request, binary = self._split(headers, body)
        if not isinstance(request, dict):
            raise http_body.ClientError("the body must be a JSON object.", "body")
        unknown = set(request) - {"id", "parameters", "inputs", "outputs"}
        if unknown:
            raise http_body.ClientError(
                f"unknown keys {sorted(unknown)[:5]}; allowed: id, parameters, "
                "inputs, outputs.", sorted(unknown)[0][:40],
            )
        request_id = request.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise http_body.ClientError("id must be a string.", "id")
        parameters = _object(request.get("parameters", {}), "parameters")
        unknown = set(parameters) - set(REQUEST_PARAMETERS)
        if unknown:
            raise http_body.ClientError(
                f"unknown parameters {sorted(unknown)[:5]}; allowed: "
                f"{', '.join(REQUEST_PARAMETERS)}.", "parameters",
            )
        fields = {k: parameters[k] for k in ("rate", "deadline_ms") if k in parameters}
        binary_output = self._binary_output(request, parameters)
        x = self._input(request.get("inputs"), binary)

        def finish(responses):
            return self._response(request_id, responses, binary_output)

        return self.api.submit(x, fields, received_s, finish, "inputs[0]")

    def _split(self, headers, body):
        length = headers.get(HEADER_LENGTH)
        if length is None:
            return http_body.parse_json(body), b""
        if not length.isdigit() or int(length) > len(body):
            raise http_body.ClientError(
                f"Inference-Header-Content-Length must be the byte count of the "
                f"JSON header, at most the body's {len(body)} bytes. Received: "
                f"{length[:40]!r}", "Inference-Header-Content-Length",
            )
        size = int(length)
        return http_body.parse_json(body[:size]), body[size:]

    def _binary_output(self, request, parameters):
        binary = parameters.get("binary_data_output", False)
        if not isinstance(binary, bool):
            raise http_body.ClientError("binary_data_output must be true or false.",
                                        "parameters.binary_data_output")
        requested = request.get("outputs")
        if requested is None:
            return binary
        output = _only_tensor(requested, OUTPUT_NAME, "outputs", "output",
                              "the one output")
        flag = _object(output.get("parameters", {}), "outputs[0].parameters").get(
            "binary_data", binary
        )
        if not isinstance(flag, bool):
            raise http_body.ClientError("binary_data must be true or false.",
                                        "outputs[0].parameters.binary_data")
        return flag

    def _input(self, inputs, binary):
        tensor = _only_tensor(inputs, INPUT_NAME, "inputs", "input", "one tensor")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise http_body.ClientError(
                f"datatype must be one of {', '.join(DATATYPES)}. Received: "
                f"datatype={str(datatype)[:40]!r}", "inputs[0].datatype",
            )
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or len(shape) > 32
            or not all(type(d) is int and 0 <= d < 1 << 31 for d in shape)
        ):
            raise http_body.ClientError(
                "shape must be a list of non-negative integers, the batch first.",
                "inputs[0].shape",
            )
        count = math.prod(shape)
        size = _object(tensor.get("parameters", {}), "inputs[0].parameters").get(
            "binary_data_size"
        )
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        if size is not None:
            if "data" in tensor:
                raise http_body.ClientError(
                    "give data or binary_data_size, not both.", "inputs[0].data"
                )
            if type(size) is not int or size != len(binary) or size != count * dtype.itemsize:
                raise http_body.ClientError(
                    f"binary_data_size must be the {count * dtype.itemsize} bytes of "
                    f"shape={shape} in {datatype}, and the binary data after the "
                    f"header must be as long; {len(binary)} bytes follow it.",
                    "inputs[0].parameters.binary_data_size",
                )
            return np.frombuffer(binary, dtype=dtype).reshape(shape)
        if binary:
            raise http_body.ClientError(
                f"{len(binary)} bytes follow the JSON header, but no input has "
                "binary_data_size.", "inputs[0].parameters.binary_data_size",
            )
        x = http_body.json_array(tensor.get("data"), "inputs[0].data")
        if x.size != count:
            raise http_body.ClientError(
                f"data holds {x.size} numbers; shape={shape} needs {count}.",
                "inputs[0].data",
            )
        x = x.reshape(shape)
        if dtype.kind in "iu":
            if not np.all(x == np.round(x)):
                raise http_body.ClientError(
                    f"data of datatype {datatype} must be integers.", "inputs[0].data"
                )
            x = x.astype(dtype)
        return x

    def _response(self, request_id, responses, binary_output):
        from keras_slicing_lite.http_api import Reply
        out = np.ascontiguousarray(np.stack([r.output for r in responses]), dtype="<f4")
        rates = [r.rate for r in responses]
        parameters = {
            "rates": ",".join(format(r, "g") for r in rates),
            "late": ",".join(str(int(r.late)) for r in responses),
            "output_kind": self.api.bundle.output_kind,
        }
        if len(set(rates)) == 1:
            parameters["rate"] = rates[0]
        output = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(out.shape)}
        answer = {"model_name": self.model_name, "model_version": "1",
                  "parameters": parameters, "outputs": [output]}
        if request_id is not None:
            answer["id"] = request_id
        if not binary_output:
            output["data"] = out.reshape(-1).tolist()
            return json_reply(200, answer)
        data = out.tobytes()
        output["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps(answer).encode("utf-8")
        return Reply(200, header + data, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        })

    def _method(self, method, allowed):
        if method != allowed:
            raise http_body.ClientError(f"use {allowed} here.", "method", 405)


def _only_tensor(tensors, name, field, kind, listing):
    """The one tensor object of the list `field`, which must be named `name`."""
    if not isinstance(tensors, list) or len(tensors) != 1:
        raise http_body.ClientError(f"{field} must list {listing}, {name!r}.", field)
    tensor = _object(tensors[0], f"{field}[0]")
    if tensor.get("name") != name:
        raise http_body.ClientError(
            f"this model has one {kind}, {name!r}. Received: "
            f"name={str(tensor.get('name'))[:40]!r}", f"{field}[0].name",
        )
    return tensor


def _object(value, field):
    if not isinstance(value, dict):
        raise http_body.ClientError(f"{field} must be a JSON object.", field)
    return value
