"""Live serving: the worker thread, the futures, and their errors.

`ElasticServer` (`elastic_server.py`) plans and answers batches; this mixin
of it runs that loop on a worker thread for callers who submit examples
and wait on futures, and owns everything only live serving has: the
errors callers see, start and stop, refusal when the queue is full, and
failing every waiting caller when the worker fails. It reads what the
server sets up: `bundle`, `rates`, `clock`, `max_queue`, `_buckets`,
`_queue`, `_lock`, `_stats`, `_wakeup`, `_thread`, `_fault`, `_finishing`,
and calls its `_take`, `_answer`, `_example` and `pin_rate`.
"""

import bisect
import concurrent.futures
import math
import threading
import time

import numpy as np

from keras_slicing_lite.planner import ArrivalRate
from keras_slicing_lite.request import FUTURE
from keras_slicing_lite.request import is_number


class QueueFullError(RuntimeError):
    """`ElasticServer.submit` refused a request: `max_queue` are waiting."""


class BatchTooLargeError(QueueFullError):
    """`ElasticServer.submit_batch` refused a batch larger than `max_queue`:
    it could never be queued, however long the caller waits."""


class ServerStoppedError(RuntimeError):
    """The server is not running, or stopped before answering a request."""


class ServerFailedError(RuntimeError):
    """The server's worker failed; `__cause__` holds its exception."""


class LiveServing:
    """The live-serving half of `ElasticServer` (a mixin of it)."""

    @property
    def running(self):
        """Whether live serving is on (started, not stopped, not failed)."""
        return self._thread is not None and self._fault is None

    @property
    def fault(self):
        """The exception that stopped the worker, or `None`."""
        return self._fault

    def start(self):
        """Starts serving live requests (real clock only) on a worker thread.

        Every width is first called once at every padded batch size, so that
        no request waits for an interpreter to be built.
        """
        if self.clock != "real":
            raise ValueError(
                "ElasticServer.start: live serving runs on the wall clock; "
                "create the server with clock='real'. Received: "
                f"clock={self.clock!r}"
            )
        if self._thread is not None:
            raise RuntimeError("ElasticServer.start: the server is already running.")
        if self._finishing is not None and self._finishing.is_alive():
            raise RuntimeError(
                "ElasticServer.start: the previous worker is still finishing "
                "the batch it held when stop() timed out; try again shortly."
            )
        self._warm_up()
        self._origin = time.perf_counter()
        self._arrivals = ArrivalRate()
        self._queue = []
        self._sequence = 0
        self._stopping = False
        self._fault = None
        self._thread = threading.Thread(
            target=self._serve_live, name="ElasticServer", daemon=True
        )
        self._thread.start()
        return self

    def submit(self, x, deadline_ms=None, rate=None):
        """Queues one example; returns a `concurrent.futures.Future` of its `Response`.

        The future may be cancelled by the caller at any time before the
        worker takes it; it is then skipped.

        Args:
            x: A single example (no batch axis).
            deadline_ms: Milliseconds from now until the answer is due;
                `None` means no deadline. A deadline already past (zero or
                negative) is still answered, and counted late.
            rate: One of the server's rates to answer at, or `None` (the
                default) to let the server choose.

        Raises:
            ValueError: for an example of the wrong shape or dtype, or a
                rate the server does not serve.
            QueueFullError: when `max_queue` requests are already waiting.
            ServerFailedError: after a fault in the worker (its cause).
            ServerStoppedError: when the server is stopped or stopping.
        """
        return self._submit([self._example(x, "submit")], deadline_ms, rate, "submit")[0]

    def submit_batch(self, x, deadline_ms=None, rate=None):
        """Queues every example of a batch, or none; returns their futures.

        A batch is queued whole or refused whole, so that a refused batch
        never holds places in the queue that other requests could use.

        Args:
            x: A batch `(batch, *input_shape[1:])`, or a list of examples.
            deadline_ms, rate: As for `submit`, the same for every example.

        Raises:
            BatchTooLargeError: when the batch holds more than `max_queue`
                examples (it could never be queued); otherwise the errors
                of `submit`.
        """
        owner = "submit_batch"
        self._check_running(owner)
        if len(x) == 0:
            raise ValueError(f"ElasticServer.{owner}: the batch is empty.")
        if self.max_queue is not None and len(x) > self.max_queue:
            with self._lock:
                self._stats["rejected"] += len(x)
            raise BatchTooLargeError(
                f"ElasticServer.{owner}: the batch has {len(x)} examples, more "
                f"than max_queue={self.max_queue} can ever hold; send at most "
                f"{self.max_queue} per request."
            )
        prepared = self.bundle.prepare(np.asarray(x), f"ElasticServer.{owner}")
        return self._submit(list(prepared), deadline_ms, rate, owner)

    def _submit(self, examples, deadline_ms, rate, owner):
        self._check_running(owner)
        if deadline_ms is not None and not is_number(deadline_ms, inf_ok=True):
            raise ValueError(
                f"ElasticServer.{owner}: deadline_ms must be a number or None. "
                f"Received: deadline_ms={deadline_ms!r}"
            )
        if rate is not None:
            rate = self.pin_rate(rate, f"ElasticServer.{owner}")
        futures = [concurrent.futures.Future() for _ in examples]
        with self._wakeup:
            if self._fault is not None:
                raise ServerFailedError(
                    f"ElasticServer.{owner}: the server stopped after a fault in "
                    f"its worker: {self._fault!r}"
                ) from self._fault
            if self._stopping:
                raise ServerStoppedError(f"ElasticServer.{owner}: the server is stopping.")
            if self.max_queue is not None and len(self._queue) + len(examples) > self.max_queue:
                with self._lock:
                    self._stats["rejected"] += len(examples)
                raise QueueFullError(
                    f"ElasticServer.{owner}: the queue is full ({len(self._queue)} "
                    f"of max_queue={self.max_queue} requests waiting); retry later."
                )
            arrival = time.perf_counter() - self._origin
            deadline = math.inf if deadline_ms is None else arrival + deadline_ms / 1e3
            self._arrivals.add(arrival, len(examples))
            for example, future in zip(examples, futures):
                self._sequence += 1
                bisect.insort(
                    self._queue,
                    (deadline, self._sequence, self._sequence, arrival, example, future, rate),
                )
            self._wakeup.notify()
        return futures

    def stop(self, timeout=None):
        """Stops live serving; returns whether every queued request was answered.

        New submissions are refused at once (`ServerStoppedError`). The
        worker keeps answering what is queued, in deadline order, for up to
        `timeout` seconds (`None`: until the queue is empty). When the time
        is up, every request still queued fails with `ServerStoppedError`;
        a batch already running finishes and is answered (an interpreter
        call cannot be interrupted), and `stop` returns without waiting for
        it. Calling `stop` on a stopped server does nothing.

        Args:
            timeout: Seconds to drain the queue, or `None`. Defaults to `None`.

        Returns:
            `True` when the queue was drained (or the server was not
            running), `False` when requests were failed by the timeout or by
            an earlier fault.
        """
        if timeout is not None and (not is_number(timeout, inf_ok=True) or not timeout >= 0):
            raise ValueError(
                "ElasticServer.stop: timeout must be a number of seconds >= 0 "
                f"or None. Received: timeout={timeout!r}"
            )
        thread = self._thread
        if thread is None:
            return True
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        thread.join(timeout)
        drained = not thread.is_alive() and self._fault is None
        if thread.is_alive():
            self._finishing = thread
            with self._wakeup:
                left, self._queue = self._queue, []
            self._fail(left, ServerStoppedError(
                f"ElasticServer.stop: the server stopped after timeout={timeout} s "
                "before answering this request."
            ))
        self._thread = None
        return drained

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _serve_live(self):
        batch = []
        try:
            while True:
                with self._wakeup:
                    while not self._queue and not self._stopping:
                        self._wakeup.wait()
                    if not self._queue:
                        return
                    now = time.perf_counter() - self._origin
                    rate, batch = self._take(now)
                clock = lambda bucket: time.perf_counter() - self._origin  # noqa: E731
                for entry, response in zip(batch, self._answer(rate, batch, now, clock)):
                    if response is not None:
                        entry[FUTURE].set_result(response)
                batch = []
        except BaseException as error:  # every waiting caller must hear of it
            with self._wakeup:
                self._fault = error
                left, self._queue = self._queue, []
            self._fail(batch, error)
            self._fail(left, error)

    def _check_running(self, owner):
        if self._thread is None:
            raise ServerStoppedError(
                f"ElasticServer.{owner}: the server is not running; call start() "
                "first (or use the server as a context manager)."
            )

    def _warm_up(self):
        # The first call of a width at a batch size builds its interpreter
        # (tens of ms, XNNPACK packs the weights): pay it before the first
        # request does, for every width and padded batch size.
        shape = self.bundle.input_shape[1:]
        if any(d is None for d in shape):
            return  # sizes not known before requests arrive
        for rate in self.rates:
            for bucket in self._buckets:
                self.bundle.predict(np.zeros((bucket, *shape), self.bundle.input_dtype), rate)

    def _fail(self, entries, error):
        failed = 0
        for entry in entries:
            try:
                entry[FUTURE].set_exception(error)
                failed += 1
            except concurrent.futures.InvalidStateError:
                pass  # cancelled by its caller meanwhile
        with self._lock:
            self._stats["failed"] += failed
