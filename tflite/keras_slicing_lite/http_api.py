"""What the HTTP front ends answer, apart from the transport.

`ServingAPI` turns a request that a transport has read (method, target,
headers, body bytes) into a `Reply`, or into a `Pending` answer: the
futures of the examples it queued on the `ElasticServer`, and how to reply
once they are answered. The transports (`asgi_server.ASGIFrontEnd` on
uvicorn, `http_server.HTTPFrontEnd` on the standard library) only read
sockets, wait and write, so that every endpoint, status code and error
message is the same on both; the contract is written in docs/http-api.md.

Every request the client can fix gets a 4xx and `{"error": message,
"field": name}`; a 500 is only a real fault, and it is logged.
"""

import json
import logging
import math
import threading
import time
import urllib.parse

import numpy as np

from keras_slicing_lite import elastic_server
from keras_slicing_lite import http_body
from keras_slicing_lite import open_inference
from keras_slicing_lite import outputs
from keras_slicing_lite.http_metrics import Metrics
from keras_slicing_lite.http_reply import Reply
from keras_slicing_lite.http_reply import error_reply
from keras_slicing_lite.http_reply import json_reply

LOG = logging.getLogger("keras_slicing_lite.http")
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Weight of the newest request in the front end's estimates: about the last 20
# count, so that it rises within a few tens of milliseconds of a burst.
DELIVERY_SMOOTHING = 0.05
# Mean absolute deviations above the mean that the delivery reserve covers:
# replies wait for the interpreter lock behind other threads, so their
# times have a long tail, and the reserve must cover most of it.
DELIVERY_SPREAD = 3.0
PREDICT_KEYS = ("inputs", "input", "deadline_ms", "rate")


class Pending:
    """Examples queued on the server; `reply()` once their futures are done.

    Attributes:
        futures: The `concurrent.futures.Future` of every example.
    """

    def __init__(self, api, futures, submitted_s, finish):
        self.futures = futures
        self._api = api
        self._submitted_s = submitted_s
        self._finish = finish
        self.answered_s = None

    def reply(self):
        """The reply, the futures being done."""
        try:
            responses = [future.result(timeout=0) for future in self.futures]
        except Exception as error:
            return self._api.fault(error)
        # When the output was ready, on this clock: the server's latency runs
        # from its arrival stamp, taken just after `submitted_s`, so this is
        # a little early and the delivery time errs long (safe).
        self.answered_s = self._submitted_s + max(r.latency_ms for r in responses) / 1e3
        self._api.metrics.answered(responses)
        try:
            return self._finish(responses)
        except Exception as error:
            return self._api.fault(error)

    def cancel(self):
        for future in self.futures:
            future.cancel()


class RunningEstimate:
    """A running estimate of a time: a weighted mean plus `spread` deviations.

    `estimate_s` is an exponentially weighted mean of the measured times
    plus `spread` weighted mean absolute deviations (for exponentially
    distributed times and `spread=3`, about their 95th percentile; with
    `spread=0`, the mean).

    Args:
        smoothing: Weight of the newest measurement, in (0, 1].
        spread: Deviations above the mean.
    """

    def __init__(self, smoothing=DELIVERY_SMOOTHING, spread=DELIVERY_SPREAD):
        self.smoothing = float(smoothing)
        self.spread = float(spread)
        self.mean_s = None
        self.deviation_s = 0.0

    def add(self, seconds):
        if self.mean_s is None:
            self.mean_s = float(seconds)
            return
        self.deviation_s += self.smoothing * (abs(seconds - self.mean_s) - self.deviation_s)
        self.mean_s += self.smoothing * (seconds - self.mean_s)

    @property
    def estimate_s(self):
        if self.mean_s is None:
            return 0.0
        return self.mean_s + self.spread * self.deviation_s


class ServingAPI:
    """The endpoints of the HTTP front ends, for any transport.

    Args:
        server: A started `ElasticServer` (real clock).
        default_deadline_ms: Deadline of a request that names none; `None`
            means no deadline.
        max_body_bytes: Largest request body accepted.
        request_timeout_s: Most seconds a request waits for its answer
            before a 504.
        measure_front_end: Tell the server's planner what the front end
            adds to each request (`ElasticServer.front_end`, see `delivered`).
        model_name: The name of the model in the Open Inference Protocol
            paths (`/v2/models/{name}`). Defaults to the manifest's
            `model_name`, or `"model"`.
    """

    def __init__(
        self,
        server,
        default_deadline_ms=None,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
        measure_front_end=True,
        model_name=None,
    ):
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("request_timeout_s", request_timeout_s),
        ):
            if (
                type(value) not in (int, float)
                or not math.isfinite(float(value))
                or not value > 0
            ):
                raise ValueError(
                    f"HTTP front end: {name} must be a positive number. "
                    f"Received: {name}={value!r}"
                )
        self.server = server
        self.bundle = server.bundle
        self.default_deadline_ms = http_body.deadline(default_deadline_ms, "default_deadline_ms")
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout_s = float(request_timeout_s)
        self.measure_front_end = bool(measure_front_end)
        self.protocol = open_inference.OpenInference(
            self, model_name or self.bundle.manifest.get("model_name") or "model"
        )
        self.metrics = Metrics()
        self._delivery = RunningEstimate()
        # Processor seconds per request of the front end: their mean.
        self._cost = RunningEstimate(spread=0.0)
        self._counts = {
            "requests": 0, "examples": 0, "client_errors": 0, "rejected": 0,
            "timeouts": 0, "server_errors": 0, "refused_connections": 0,
        }
        self._lock = threading.Lock()

    def count(self, key, n=1):
        """Adds `n` to the HTTP counter `key` (see `stats`)."""
        with self._lock:
            self._counts[key] += n

    def check_body(self, method, length):
        """The error reply for a body announced with `length`, or `None`.

        Called by the transport before it reads the body, so that a body
        that is too large is refused unread.

        Args:
            method: The request method.
            length: The `Content-Length` header, or `None`.
        """
        if method != "POST":
            return None
        if length is None:
            return self.client_error(http_body.ClientError(
                "a Content-Length header is required.", "Content-Length", 411
            ))
        try:
            size = int(length)
            if size < 0 or not length.strip().isdigit():
                raise ValueError
        except ValueError:
            return self.client_error(http_body.ClientError(
                f"bad Content-Length {length[:40]!r}.", "Content-Length"
            ))
        if size > self.max_body_bytes:
            return self.client_error(http_body.ClientError(
                f"the body has {size} bytes; at most "
                f"max_body_bytes={self.max_body_bytes} are accepted.",
                "Content-Length", 413,
            ))
        return None

    def handle(self, method, target, headers, body, received_s):
        """Answers one request: a `Reply`, or a `Pending` to wait for.

        Args:
            method: `"GET"`, `"POST"`, ...
            target: The request target, path and query.
            headers: `{lower-case name: value}`.
            body: The body bytes (`b""` for none).
            received_s: `time.perf_counter()` when the request arrived: the
                deadline runs from here.
        """
        self.count("requests")
        path, _, query = target.partition("?")
        path = urllib.parse.unquote(path)
        try:
            return self._route(method, path, query, headers, body, received_s)
        except http_body.ClientError as error:
            return self.client_error(error)
        except elastic_server.BatchTooLargeError as error:
            return self.client_error(http_body.ClientError(str(error), "inputs", 413))
        except elastic_server.QueueFullError as error:
            self.count("rejected")
            return error_reply(503, str(error), headers={"Retry-After": "1"})
        except (elastic_server.ServerStoppedError, elastic_server.ServerFailedError) as error:
            self.count("server_errors")
            return error_reply(503, str(error))
        except Exception as error:
            return self.fault(error)

    def timed_out(self, pending):
        """The reply to a `Pending` not answered within `request_timeout_s`."""
        pending.cancel()
        self.count("timeouts")
        return error_reply(504, f"not answered within request_timeout_s={self.request_timeout_s}.")

    def client_error(self, error):
        self.count("client_errors")
        self.metrics.status(error.status)
        return error_reply(error.status, str(error), error.field)

    def fault(self, error):
        """A 500 for a fault of the server, logged with its traceback."""
        self.count("server_errors")
        self.metrics.status(500)
        LOG.error("fault while answering a request", exc_info=error)
        return error_reply(500, f"{type(error).__name__}: {error}")

    def delivered(self, pending, cpu_s):
        """Measures a `Pending` request whose reply was just written.

        The time from its answer to its reply written feeds a running high
        estimate (`RunningEstimate`) that the planner finishes earlier by;
        the transport's processor time per example (a running mean) is
        counted against each width's throughput.

        Args:
            pending: The `Pending` answered.
            cpu_s: Processor seconds the transport spent on the request.
        """
        if pending.answered_s is None:
            return
        with self._lock:
            self._delivery.add(time.perf_counter() - pending.answered_s)
            self._cost.add(cpu_s / len(pending.futures))
            delivery, cost = self._delivery.estimate_s, self._cost.estimate_s
        if self.measure_front_end:
            self.server.front_end(delivery_ms=delivery * 1e3, cost_ms=cost * 1e3)

    def stats(self):
        with self._lock:
            counts = dict(self._counts)
            counts["delivery_ms"] = round(self._delivery.estimate_s * 1e3, 3)
            counts["cost_ms"] = round(self._cost.estimate_s * 1e3, 3)
        server = self.server.stats
        server["by_rate"] = {format(r, "g"): n for r, n in server["by_rate"].items()}
        return {"http": counts, "server": server}

    def health(self):
        if self.server.fault is not None:
            return 503, {"status": "failed", "error": repr(self.server.fault)}
        if not self.server.running:
            return 503, {"status": "stopped"}
        return 200, {
            "status": "ok",
            "rates": list(self.server.rates),
            "output_kind": self.bundle.output_kind,
            "input_shape": list(self.bundle.input_shape),
            "input_dtype": self.bundle.input_dtype,
            "queued": self.server.stats["queued"],
        }

    def submit(self, x, fields, received_s, finish, field="inputs"):
        """Queues the batch `x` on the server; returns its `Pending`.

        Args:
            x: The batch as parsed, any dtype `Bundle.prepare` accepts.
            fields: `deadline_ms` and `rate`, checked numbers (or absent).
            received_s: When the request arrived.
            finish: `responses -> Reply`.
            field: The request field holding `x`, named in errors.
        """
        if x.ndim == 0 or x.shape[0] == 0:
            raise http_body.ClientError(f"'{field}' is empty.", field)
        try:
            x = self.bundle.prepare(x, field)
        except ValueError as error:
            raise http_body.ClientError(str(error), field) from None
        deadline_ms = self.default_deadline_ms
        if "deadline_ms" in fields:
            deadline_ms = http_body.deadline(fields["deadline_ms"], "deadline_ms")
        rate = None
        if fields.get("rate") is not None:
            rate = http_body.number(fields["rate"], "rate")
            try:
                rate = self.server.pin_rate(rate, "rate")
            except ValueError as error:
                raise http_body.ClientError(str(error), "rate") from None
        if deadline_ms is not None:
            # The deadline counts from when the request arrived, so that
            # time spent parsing is not given away.
            deadline_ms -= (time.perf_counter() - received_s) * 1e3
        submitted = time.perf_counter()
        futures = self.server.submit_batch(x, deadline_ms=deadline_ms, rate=rate)
        self.count("examples", len(x))
        return Pending(self, futures, submitted, finish)

    def _route(self, method, path, query, headers, body, received_s):
        if path.startswith("/v2"):
            return self.protocol.route(method, path, query, headers, body, received_s)
        allowed = {"/predict": "POST", "/health": "GET", "/stats": "GET", "/metrics": "GET"}
        if path not in allowed:
            raise http_body.ClientError(
                f"no such path {path[:80]!r}; try /predict, /health, /stats, "
                "/metrics or /v2 (the Open Inference Protocol).", "path", 404,
            )
        if method != allowed[path]:
            error = error_reply(405, f"use {allowed[path]} for {path}.", "method",
                                {"Allow": allowed[path]})
            self.count("client_errors")
            return error
        if path == "/health":
            return json_reply(*self.health())
        if path == "/stats":
            return json_reply(200, self.stats())
        if path == "/metrics":
            return Reply(200, self.metrics.exposition(), {"Content-Type": self.metrics.content_type})
        return self._predict(query, headers, body, received_s)

    def _predict(self, query, headers, body, received_s):
        fields = http_body.query_fields(query)
        kind = http_body.media_type(headers.get("content-type"))
        wants_npy = http_body.accepts_npy(headers.get("accept"))
        if kind in (http_body.NPY, http_body.RAW):
            if kind == http_body.NPY:
                x = http_body.parse_npy(body)
            else:
                x = http_body.parse_raw(body, self.bundle.input_shape, self.bundle.input_dtype)
            if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
                raise http_body.ClientError("inputs must be finite numbers.", "inputs")
            single = False
        else:  # JSON, whatever the type says (curl -d sends a form type)
            data = http_body.parse_json(body, kind)
            if not isinstance(data, dict):
                raise http_body.ClientError("the body must be a JSON object with 'inputs'.")
            unknown = set(data) - set(PREDICT_KEYS)
            if unknown:
                raise http_body.ClientError(
                    f"unknown keys {sorted(unknown)[:5]}; allowed: inputs (or input), "
                    "deadline_ms, rate.", sorted(unknown)[0][:40],
                )
            if ("inputs" in data) == ("input" in data):
                raise http_body.ClientError(
                    "give exactly one of 'inputs' (a list of examples) or 'input'.", "inputs"
                )
            for key in http_body.QUERY_FIELDS:
                if key in data and key in fields:
                    raise http_body.ClientError(
                        f"{key} is given both in the query and in the body; give it once.", key
                    )
                if key in data:
                    fields[key] = data[key]
            single = "input" in data
            x = http_body.json_array([data["input"]] if single else data["inputs"],
                                     "input" if single else "inputs")

        def finish(responses):
            answer = self._answer(
                np.stack([r.output for r in responses]),
                [r.rate for r in responses],
                [r.late for r in responses],
                [r.latency_ms for r in responses],
                single,
            )
            if wants_npy and not single:
                return Reply(200, *http_body.npy_answer(answer))
            return json_reply(200, answer)

        return self.submit(x, fields, received_s, finish, "input" if single else "inputs")

    def _answer(self, out, rates, late, latency_ms, single):
        kind = self.bundle.output_kind
        predictions = outputs.predictions(kind, out)
        answer = {
            "outputs": out.tolist(),
            "predictions": np.asarray(predictions).tolist(),
            "rates": [float(r) for r in rates],
            "late": [bool(v) for v in late],
            "latency_ms": [round(float(v), 3) for v in latency_ms],
            "output_kind": kind,
        }
        if single:
            answer = {
                "output": answer["outputs"][0],
                "prediction": answer["predictions"][0],
                "rate": answer["rates"][0],
                "late": answer["late"][0],
                "latency_ms": answer["latency_ms"][0],
                "output_kind": kind,
            }
        return answer
