"""Serving requests with deadlines by choosing the width per batch."""

import bisect
import math
import numbers
import threading
import time

import numpy as np

from keras_slicing_lite.latency_profile import STATISTICS
from keras_slicing_lite.live import LiveServing
from keras_slicing_lite.planner import ArrivalRate
from keras_slicing_lite.planner import WidthPlanner
from keras_slicing_lite.request import Request
from keras_slicing_lite.request import Response

CLOCKS = ("simulated", "real")
SIMULATED_LATENCIES = ("p50", "sampled")


class ElasticServer(LiveServing):
    """Answers queued requests, choosing the width of each batch to meet deadlines.

    Requests wait in a queue ordered by deadline. Whenever the model is
    free, the server takes up to `max_batch_size` of them and picks the
    widest rate it could keep: (a) the whole queue, served at that rate in
    batches of `max_batch_size`, meets every deadline, and (b) at the
    arrival rate measured over the last few tens of milliseconds, that
    rate's throughput keeps up with margin (utilization at most 0.8), so the
    queue does not grow while it serves. When no rate passes, the system is
    overloaded and the narrowest rate answers, draining the queue fastest.
    Nothing is dropped: a request that cannot be answered in time is
    answered late and counted in `stats["late"]`. Planning uses the latency
    profile (`plan_statistic`, times `headroom`); batches are padded to the
    profiled batch sizes so that every call has a measured cost and a cached
    interpreter.

    Two clocks:
    - `"simulated"`: `replay()` advances a virtual clock by the cost of
      each batch instead of waiting: its profiled median, or with
      `simulated_latency="sampled"` a draw from the measured calls of the
      profile (seeded), so that a batch can overrun its plan as on a real
      device. Outputs are computed for real, but timing is reproducible:
      for tests, and for replaying a trace of an hour in seconds.
    - `"real"`: `replay()` sleeps until each arrival and times each batch on
      the wall clock; `start()`/`submit()`/`stop()` serve live requests from
      other threads. Planning then corrects the profile by the costs
      measured on the wall clock: after every batch, a weighted fit over
      recent batches of `cost = fixed + slowdown * profiled median` (Python
      work around a call adds about the same to each; a busy machine slows
      every call in proportion).

    Live serving cannot hang a caller: a future cancelled by its caller is
    skipped; a request whose deadline has already passed is answered (late)
    and counted; `max_queue` bounds the queue and `submit` beyond it raises
    `QueueFullError` at once; an exception in the worker fails the requests
    it holds and everything queued with that error, and every later
    `submit` raises `ServerFailedError` (the thread never dies silently);
    `stop(timeout)` drains the queue, failing with `ServerStoppedError`
    whatever is left when the timeout expires.

    Args:
        bundle: A `Bundle` from `load_bundle`.
        profile: A `LatencyProfile` of the bundle on this device. `None`
            uses `bundle.profile()` (cached measurement or a new one).
        rates: The rates the server may use. Defaults to every rate of the
            bundle; a single rate gives a fixed-width server (a baseline).
        max_batch_size: Most requests per call. Defaults to the largest
            profiled batch size.
        clock: `"simulated"` or `"real"`. Defaults to `"simulated"`.
        plan_statistic: Profile statistic used for planning, `"p50"`,
            `"p90"` or `"mean"`. Defaults to `"p90"`.
        headroom: Factor (>= 1 is safer) on planned latencies. Defaults to 1.
        reserve_ms: Milliseconds to plan to finish before each deadline,
            absorbing stalls the profile cannot foresee (preemption by other
            processes on the real clock). Defaults to 0.
        max_queue: Most live requests waiting at once; `None` (the default)
            means no bound. Beyond it `submit` raises `QueueFullError`.
        simulated_latency: Cost of a batch on the simulated clock: `"p50"`
            (the profiled median, the default) or `"sampled"` (a draw from
            the profile's measured calls).
        seed: Seed of the `"sampled"` draws. Defaults to 0.

    Example:

    >>> server = ElasticServer(bundle, clock="simulated")
    >>> responses = server.replay(
    ...     Request(x, arrival_s=t, deadline_s=t + 0.02) for x, t in trace)
    >>> server.stats["late"], server.stats["by_rate"]

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(
        self,
        bundle,
        profile=None,
        rates=None,
        max_batch_size=None,
        clock="simulated",
        plan_statistic="p90",
        headroom=1.0,
        reserve_ms=0.0,
        max_queue=None,
        simulated_latency="p50",
        seed=0,
    ):
        if clock not in CLOCKS:
            raise ValueError(
                f"ElasticServer: clock must be one of {', '.join(CLOCKS)}. "
                f"Received: clock={clock!r}"
            )
        if plan_statistic not in STATISTICS:
            raise ValueError(
                "ElasticServer: plan_statistic must be one of "
                f"{', '.join(STATISTICS)}. Received: plan_statistic={plan_statistic!r}"
            )
        if (
            isinstance(headroom, bool)
            or not isinstance(headroom, numbers.Real)
            or not headroom > 0
            or not math.isfinite(headroom)
        ):
            raise ValueError(
                "ElasticServer: headroom must be a positive number. "
                f"Received: headroom={headroom!r}"
            )
        if (
            isinstance(reserve_ms, bool)
            or not isinstance(reserve_ms, numbers.Real)
            or not reserve_ms >= 0
            or not math.isfinite(reserve_ms)
        ):
            raise ValueError(
                "ElasticServer: reserve_ms must be a number >= 0. "
                f"Received: reserve_ms={reserve_ms!r}"
            )
        if max_queue is not None and (
            isinstance(max_queue, bool)
            or not isinstance(max_queue, numbers.Integral)
            or max_queue < 1
        ):
            raise ValueError(
                "ElasticServer: max_queue must be a positive integer or None. "
                f"Received: max_queue={max_queue!r}"
            )
        if simulated_latency not in SIMULATED_LATENCIES:
            raise ValueError(
                "ElasticServer: simulated_latency must be one of "
                f"{', '.join(SIMULATED_LATENCIES)}. Received: "
                f"simulated_latency={simulated_latency!r}"
            )
        self.bundle = bundle
        self.max_queue = None if max_queue is None else int(max_queue)
        self.simulated_latency = simulated_latency
        self._seed = seed
        chosen = bundle.resolve_rates(rates, "ElasticServer")
        self.rates = tuple(sorted(chosen, reverse=True))
        self.profile = profile if profile is not None else bundle.profile()
        measured = None
        for rate in self.rates:
            sizes = set(self.profile.batch_sizes(rate))  # raises for unprofiled
            measured = sizes if measured is None else measured & sizes
        if not measured:
            raise ValueError(
                "ElasticServer: the profile has no batch size measured for "
                "every rate; profile all rates at the same batch sizes."
            )
        measured = sorted(measured)
        if max_batch_size is None:
            max_batch_size = measured[-1]
        if (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, numbers.Integral)
            or max_batch_size < 1
        ):
            raise ValueError(
                "ElasticServer: max_batch_size must be a positive integer. "
                f"Received: max_batch_size={max_batch_size!r}"
            )
        self.max_batch_size = int(max_batch_size)
        # An unmeasured maximum is interpolated by the profile.
        self._buckets = [s for s in measured if s < self.max_batch_size]
        self._buckets.append(self.max_batch_size)
        self.clock = clock
        self.plan_statistic = plan_statistic
        self.headroom = float(headroom)
        self.reserve_ms = float(reserve_ms)
        self._service_s = {
            (r, b): self.profile.latency_ms(r, b, "p50") / 1e3
            for r in self.rates
            for b in self._buckets
        }
        self._planner = WidthPlanner(
            self.rates,
            {
                (r, b): self.profile.latency_ms(r, b, plan_statistic) * self.headroom / 1e3
                for r in self.rates
                for b in self._buckets
            },
            self._service_s,
            self.max_batch_size,
            self.reserve_ms / 1e3,
        )
        self._arrivals = ArrivalRate()
        self._kind = bundle.output_kind
        self._lock = threading.Lock()
        self._reset_stats()
        self._thread = None
        self._fault = None

    @property
    def stats(self):
        """Counters since construction.

        `served` (answered, late ones included), `late`, `batches`,
        `by_rate` (answers per rate), and for live serving `cancelled`
        (skipped because the caller cancelled), `rejected` (refused by a full
        queue), `failed` (failed by a worker fault or a stop timeout) and
        `queued` (waiting now).
        """
        with self._lock:
            stats = dict(self._stats)
            stats["by_rate"] = dict(self._stats["by_rate"])
        live = getattr(self, "_live", None)
        stats["queued"] = len(live) if live is not None and self._thread else 0
        return stats

    @property
    def running(self):
        """Whether live serving is on (started, not stopped, not failed)."""
        return self._thread is not None and self._fault is None

    @property
    def fault(self):
        """The exception that stopped the worker, or `None`."""
        return self._fault

    def plan(self, deadlines_s, now_s=0.0, arrival_rate=None):
        """The rate and batch size the server would choose now.

        Args:
            deadlines_s: Deadlines of the queued requests (any order).
            now_s: The current time on the same clock.
            arrival_rate: Requests per second arriving now. `None` uses the
                server's own estimate from the arrivals it has seen.

        Returns:
            `(rate, batch_size)`.
        """
        queue = sorted((float(d), i) for i, d in enumerate(deadlines_s))
        if not queue:
            raise ValueError("ElasticServer.plan: the queue is empty.")
        if arrival_rate is None:
            arrival_rate = self._arrivals.at(float(now_s))
        elif (
            isinstance(arrival_rate, bool)
            or not isinstance(arrival_rate, numbers.Real)
            or not arrival_rate >= 0
        ):
            raise ValueError(
                "ElasticServer.plan: arrival_rate must be a number >= 0 (requests "
                f"per second) or None. Received: arrival_rate={arrival_rate!r}"
            )
        return self._planner.plan(float(now_s), queue, float(arrival_rate))

    def replay(self, requests):
        """Serves a recorded stream of requests; returns the responses.

        Args:
            requests: Iterable of `Request`, arrival times in seconds from
                the start of the replay.

        Returns:
            A list of `Response`, one per request, in the order given.
        """
        if self._thread is not None:
            raise RuntimeError(
                "ElasticServer.replay: the server is serving live requests; "
                "call stop() first."
            )
        items = []
        for position, request in enumerate(requests):
            if not isinstance(request, Request):
                raise ValueError(
                    "ElasticServer.replay: expected Request objects. "
                    f"Received: {type(request).__name__} at position {position}"
                )
            arrival = _time(request.arrival_s, "arrival_s", position)
            deadline = _time(request.deadline_s, "deadline_s", position, inf_ok=True)
            if deadline < arrival:
                raise ValueError(
                    f"ElasticServer.replay: request {position} is due before "
                    f"it arrives. Received: arrival_s={arrival}, "
                    f"deadline_s={deadline}"
                )
            x = self._example(request.x, f"request {position}")
            rid = position if request.id is None else request.id
            items.append((arrival, deadline, position, rid, x))
        items.sort(key=lambda item: (item[0], item[2]))
        responses = [None] * len(items)
        queue = []
        self._arrivals = ArrivalRate()
        if self.clock == "simulated":
            now = 0.0
            rng = np.random.default_rng(self._seed)
        else:
            origin = time.perf_counter()
        nxt = 0
        while nxt < len(items) or queue:
            if self.clock == "real":
                now = time.perf_counter() - origin
            while nxt < len(items) and items[nxt][0] <= now:
                arrival, deadline, position, rid, x = items[nxt]
                bisect.insort(queue, (deadline, position, rid, arrival, x))
                self._arrivals.add(arrival)
                nxt += 1
            if not queue:
                wake = items[nxt][0]
                if self.clock == "simulated":
                    now = wake
                else:
                    time.sleep(max(0.0, wake - (time.perf_counter() - origin)))
                continue
            rate, count = self._plan(now, queue)
            batch = queue[:count]
            del queue[:count]
            outputs, bucket = self._run(rate, [entry[4] for entry in batch])
            if self.clock == "simulated" and self.simulated_latency == "sampled":
                finish = now + self.profile.sample_ms(rate, bucket, rng) / 1e3
            elif self.clock == "simulated":
                finish = now + self._service_s[(rate, bucket)]
            else:
                finish = time.perf_counter() - origin
                self._observe(rate, bucket, finish - now)
            answered = []
            for (deadline, position, rid, arrival, _), out in zip(batch, outputs):
                response = Response(
                    rid, out, rate, count, arrival, now, finish, deadline, self._kind
                )
                responses[position] = response
                answered.append(response)
            self._count(rate, answered)
            now = finish
        return responses

    def _plan(self, now, queue):
        """Chooses `(rate, batch_size)` for a queue sorted by deadline."""
        return self._planner.plan(now, queue, self._arrivals.at(now))

    def _observe(self, rate, bucket, seconds):
        self._planner.observe(rate, bucket, seconds)

    def _bucket(self, count):
        return self._planner.bucket(count)

    def _run(self, rate, examples):
        count = len(examples)
        bucket = self._bucket(count)
        batch = np.stack(examples)
        if bucket > count:
            # Padding to a profiled size reuses a cached interpreter and
            # keeps the cost the profile measured; padded rows are dropped.
            pad = np.repeat(batch[-1:], bucket - count, axis=0)
            batch = np.concatenate([batch, pad])
        return self.bundle.predict(batch, rate)[:count], bucket

    def _example(self, x, owner):
        prepared = self.bundle.prepare(np.asarray(x)[None], f"ElasticServer ({owner})")
        return prepared[0]

    def _count(self, rate, responses):
        with self._lock:
            self._stats["served"] += len(responses)
            self._stats["late"] += sum(r.late for r in responses)
            self._stats["batches"] += 1
            by_rate = self._stats["by_rate"]
            by_rate[rate] = by_rate.get(rate, 0) + len(responses)

    def _reset_stats(self):
        self._stats = {
            "served": 0,
            "late": 0,
            "batches": 0,
            "by_rate": {},
            "cancelled": 0,
            "rejected": 0,
            "failed": 0,
        }


def _time(value, name, position, inf_ok=False):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(value)
        or value < 0
        or (math.isinf(value) and not inf_ok)
    ):
        raise ValueError(
            f"ElasticServer.replay: request {position} needs {name} as a "
            f"number of seconds >= 0. Received: {name}={value!r}"
        )
    return float(value)
