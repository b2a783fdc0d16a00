"""Binary request bodies and query fields of `POST /predict`.

A JSON body of one 32x32x3 image is about 26 KB of text whose parsing costs
milliseconds of Python; the same image as bytes is 12 KB copied once. Two
binary forms are accepted:

- `application/x-npy`: a NumPy `.npy` file (format 1.0 or 2.0) holding the
  batch. The header is read with `numpy.lib.format` and the data taken with
  `np.frombuffer` after checking its byte count, so an object array (which
  would need pickle) is refused and a header cannot make the server
  allocate more than the body holds.
- `application/octet-stream`: the raw little-endian bytes of a C-ordered
  batch in the bundle's input dtype; the example shape comes from the
  bundle, the batch size from the byte count.

Their `deadline_ms` and `rate` come from the query string
(`/predict?deadline_ms=50&rate=0.5`), with the meaning of the JSON fields.
"""

import io
import json
import math
import numbers
import urllib.parse

import numpy as np

from keras_slicing_lite.inputs import format_shape

JSON = "application/json"
NPY = "application/x-npy"
RAW = "application/octet-stream"
QUERY_FIELDS = ("deadline_ms", "rate")


class ClientError(ValueError):
    """A request the client must fix: 400 (or `status`), naming the field.

    Args:
        message: What is wrong and what is allowed.
        field: The request field at fault (`"inputs"`, `"deadline_ms"`,
            `"Content-Length"`, ...), or `None` for the body as a whole.
        status: The 4xx status. Defaults to 400.
    """

    def __init__(self, message, field=None, status=400):
        super().__init__(message)
        self.field = field
        self.status = status


class RequestTimeout(RuntimeError):
    """Not answered within `request_timeout_s`: 504."""


def media_type(header):
    """The media type of a `Content-Type` or `Accept` value, lower case."""
    return (header or "").split(";", 1)[0].strip().lower()


def query_fields(query):
    """`deadline_ms` and `rate` from a query string, as numbers.

    `deadline_ms=null` (or `none`) means no deadline, as JSON `null` does.
    """
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:
        raise ClientError(f"bad query string {query!r}: {error}", "query") from None
    fields = {}
    for key, value in pairs:
        if key not in QUERY_FIELDS:
            raise ClientError(
                f"unknown query parameter {key!r}; allowed: {', '.join(QUERY_FIELDS)}.",
                key,
            )
        if key in fields:
            raise ClientError(f"the query gives {key} more than once.", key)
        if key == "deadline_ms" and value.lower() in ("null", "none"):
            fields[key] = None
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ClientError(
                f"{key} in the query must be a finite number"
                + (" of milliseconds or null" if key == "deadline_ms" else "")
                + f". Received: {key}={value[:40]!r}",
                key,
            )
        fields[key] = number
    return fields


def parse_json(raw, kind=JSON):
    """The value of a JSON body; NaN and Infinity are refused.

    `kind`: the media type the request gave, shown when the body is not
    JSON (binary bodies need their own type).
    """
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ClientError("the body is not valid JSON: it is nested too deeply.", "body") from None
    except ValueError as error:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so is
        # an integer of more digits than Python converts (4,300).
        raise ClientError(
            f"the body is not valid JSON: {error}. (Binary bodies need "
            f"Content-Type {NPY} or {RAW}; received {kind or 'none'}.)",
            "body",
        ) from None


def json_array(data, field="inputs"):
    """The batch of a JSON `inputs` list, as float64.

    Only JSON numbers are numbers: `true`, `"0.5"` and `null` are refused,
    as the binary bodies refuse a bool or string dtype.
    """
    _numbers_only(data, field)
    try:
        x = np.asarray(data, dtype=np.float64)
    except OverflowError:
        raise ClientError(f"{field} holds a number too large for a float.", field) from None
    except (TypeError, ValueError, RecursionError) as error:
        raise ClientError(
            f"{field} must be a (nested) list of numbers of one shape per "
            f"example: {str(error)[:200]}",
            field,
        ) from None
    if x.ndim == 0:
        raise ClientError(f"'{field}' must be a list of examples.", field)
    if not np.all(np.isfinite(x)):
        raise ClientError(f"{field} must be finite numbers.", field)
    return x


def _numbers_only(data, field):
    # Iterative: a deeply nested list must not exhaust the stack here.
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is list:
            if all(type(v) is float or type(v) is int for v in item):
                continue
            stack.extend(item)
        elif type(item) is not float and type(item) is not int:
            raise ClientError(
                f"{field} must be a (nested) list of numbers, JSON numbers only. Received: "
                f"{json.dumps(item)[:40]} ({type(item).__name__})",
                field,
            )


def number(value, name, null_ok=False):
    """`value` as a finite float; `None` passes when `null_ok`.

    One number type for every body: a JSON number, never `true` or a
    string, and finite as a float (an integer of 400 digits is not).
    """
    if value is None and null_ok:
        return None
    if type(value) is int or type(value) is float:
        try:
            converted = float(value)
        except OverflowError:
            converted = math.inf
        if math.isfinite(converted):
            return converted
    raise ClientError(
        f"{name} must be a finite number"
        + (" or null" if null_ok else "")
        + f". Received: {name}={json.dumps(value)[:40] if _jsonable(value) else type(value).__name__}",
        name,
    )


def _jsonable(value):
    return value is None or isinstance(value, (bool, int, float, str))


def deadline(value, name):
    """`value` as float milliseconds, or `None` for no deadline."""
    return number(value, name, null_ok=True)


def parse_npy(raw):
    """The array of an `.npy` body; never unpickles."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError as error:
        raise ClientError(f"the {NPY} body is not a .npy file: {error}", "body") from None
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ClientError(
            f"the {NPY} body has .npy format version {version[0]}.{version[1]}; "
            "accepted: 1.0, 2.0 (what numpy.save writes for number arrays)."
        )
    try:
        shape, fortran_order, dtype = readers[version](stream)
    except ValueError as error:
        raise ClientError(f"the {NPY} body has a bad .npy header: {error}") from None
    if dtype.hasobject:
        raise ClientError(
            f"the {NPY} body holds Python objects (dtype={dtype}), which would "
            "need pickle; send an array of numbers."
        )
    if dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise ClientError(
            f"the {NPY} body must hold numbers. Received: dtype={dtype}"
        )
    count = math.prod(shape)
    offset = stream.tell()
    want = count * dtype.itemsize
    if len(raw) - offset != want:
        raise ClientError(
            f"the {NPY} body's header says shape={shape}, dtype={dtype}: "
            f"{want} bytes of data, but {len(raw) - offset} follow it "
            "(truncated or padded)."
        )
    x = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return x.reshape(shape, order="F" if fortran_order else "C")


def parse_raw(raw, input_shape, dtype):
    """The batch of an `application/octet-stream` body.

    Args:
        raw: The body bytes.
        input_shape: The bundle's input shape, batch axis first.
        dtype: The bundle's input dtype (read little-endian).
    """
    example = tuple(input_shape[1:])
    if any(d is None for d in example):
        raise ClientError(
            f"{RAW} needs a fixed example shape, and this bundle's input "
            f"shape is {format_shape(input_shape)}; send {NPY} (or JSON) instead."
        )
    dtype = np.dtype(dtype).newbyteorder("<")
    per_example = math.prod(example) * dtype.itemsize
    if len(raw) == 0 or len(raw) % per_example:
        raise ClientError(
            f"the {RAW} body has {len(raw)} bytes, not a positive multiple of "
            f"{per_example}: one example of shape {example} in {dtype.name} "
            f"(little-endian) is {per_example} bytes."
        )
    x = np.frombuffer(raw, dtype=dtype)
    return x.reshape((len(raw) // per_example, *example))


def _no_constant(name):
    raise ClientError(f"the body is not valid JSON: {name} is not a JSON number.", "body")


def accepts_npy(header):
    """Whether an `Accept` header lists `application/x-npy`."""
    return any(media_type(part) == NPY for part in (header or "").split(","))


def npy_answer(answer):
    """A batch answer as `(npy bytes of the outputs, headers)`.

    The outputs are float32 `(batch, ...)`; the rest of the answer rides in
    headers, one comma-separated entry per example: `X-Rates`, `X-Late`
    (0 or 1), `X-Latency-Ms`, and `X-Output-Kind`.
    """
    stream = io.BytesIO()
    outputs = np.asarray(answer["outputs"], dtype=np.float32)
    np.lib.format.write_array(stream, outputs, allow_pickle=False)
    return stream.getvalue(), {
        "Content-Type": NPY,
        "X-Rates": ",".join(format(r, "g") for r in answer["rates"]),
        "X-Late": ",".join(str(int(v)) for v in answer["late"]),
        "X-Latency-Ms": ",".join(format(v, "g") for v in answer["latency_ms"]),
        "X-Output-Kind": answer["output_kind"],
    }
