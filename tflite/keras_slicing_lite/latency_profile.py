"""Measured latency per rate and batch size, and its JSON cache."""

import json
import math
import numbers
import os
import pathlib
import tempfile

PROFILE_FORMAT = "keras-slicing-latency-profile"
PROFILE_VERSION = 1
STATISTICS = ("p50", "p90", "mean")


class LatencyProfile:
    """Latency of a bundle per rate and batch size, as measured on a device.

    Produced by `Bundle.profile()`, or built by hand (for planning on a
    device you cannot run here, or for deterministic tests). Batch sizes that
    were not measured are interpolated linearly between the measured ones,
    and extrapolated beyond the largest at its per-example cost.

    Args:
        latencies_ms: `{rate: {batch_size: {"p50": ms, "p90": ms, "mean":
            ms}}}`, optionally with `"samples": [ms, ...]` (every measured
            call, for `sample_ms`). A plain number instead of the inner dict
            sets all three statistics.
        key: What the measurement depends on (bundle files, runtime, threads,
            machine): a cached profile is reused only when its key matches.
            Defaults to `{}`.

    Example:

    >>> profile = LatencyProfile({1.0: {1: 2.0, 8: 6.0}, 0.5: {1: 1.0, 8: 2.5}})
    >>> profile.latency_ms(1.0, 4)
    3.714...
    """

    def __init__(self, latencies_ms, key=None):
        if not isinstance(latencies_ms, dict) or not latencies_ms:
            raise ValueError(
                "LatencyProfile: latencies_ms must be a non-empty dict "
                f"{{rate: {{batch_size: ms}}}}. Received: {latencies_ms!r}"
            )
        table = {}
        for rate, by_batch in latencies_ms.items():
            rate = _as_rate(rate)
            if not isinstance(by_batch, dict) or not by_batch:
                raise ValueError(
                    f"LatencyProfile: rate={rate:g} needs a non-empty dict "
                    f"{{batch_size: ms}}. Received: {by_batch!r}"
                )
            table[rate] = {
                _as_batch_size(b): _as_stats(v, rate, b) for b, v in by_batch.items()
            }
        self._table = table
        self.key = dict(key or {})

    @property
    def rates(self):
        """The profiled rates, widest first."""
        return tuple(sorted(self._table, reverse=True))

    def batch_sizes(self, rate):
        """The measured batch sizes of `rate`, ascending."""
        return tuple(sorted(self._by_batch(rate)))

    def latency_ms(self, rate, batch_size, statistic="p50"):
        """Latency in milliseconds of one call on `batch_size` examples."""
        if statistic not in STATISTICS:
            raise ValueError(
                f"LatencyProfile: statistic must be one of "
                f"{', '.join(STATISTICS)}. Received: statistic={statistic!r}"
            )
        by_batch = self._by_batch(rate)
        batch_size = _as_batch_size(batch_size)
        if batch_size in by_batch:
            return by_batch[batch_size][statistic]
        sizes = sorted(by_batch)
        if batch_size < sizes[0]:
            return by_batch[sizes[0]][statistic]
        if batch_size > sizes[-1]:
            largest = sizes[-1]
            return by_batch[largest][statistic] * batch_size / largest
        upper = next(s for s in sizes if s > batch_size)
        lower = max(s for s in sizes if s < batch_size)
        fraction = (batch_size - lower) / (upper - lower)
        low = by_batch[lower][statistic]
        return low + fraction * (by_batch[upper][statistic] - low)

    def sample_ms(self, rate, batch_size, rng):
        """One latency drawn from the measured calls of this cell.

        A simulation that charges every call its median can never show a
        call overrunning its plan; drawing from the measured distribution
        can. Cells measured without samples (a hand-made profile) give their
        median; an unmeasured batch size scales a draw from the nearest
        measured one by the ratio of their medians.

        Args:
            rate: A profiled rate.
            batch_size: Any positive batch size.
            rng: A `numpy.random.Generator`.
        """
        by_batch = self._by_batch(rate)
        batch_size = _as_batch_size(batch_size)
        nearest = min(by_batch, key=lambda b: (abs(b - batch_size), b))
        samples = by_batch[nearest].get("samples")
        median = self.latency_ms(rate, batch_size, "p50")
        if not samples:
            return median
        draw = samples[int(rng.integers(len(samples)))]
        if nearest == batch_size:
            return draw
        base = by_batch[nearest]["p50"]
        return draw * median / base if base > 0 else median

    def to_dict(self):
        return {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_VERSION,
            "key": self.key,
            "latencies_ms": [
                {"rate": rate, "batch_size": batch, **stats}
                for rate in self.rates
                for batch, stats in sorted(self._table[rate].items())
            ],
        }

    @classmethod
    def from_dict(cls, data):
        if (
            not isinstance(data, dict)
            or data.get("format") != PROFILE_FORMAT
            or data.get("format_version") != PROFILE_VERSION
            or not isinstance(data.get("latencies_ms"), list)
        ):
            raise ValueError(
                f"LatencyProfile: not a {PROFILE_FORMAT} version "
                f"{PROFILE_VERSION} document."
            )
        table = {}
        for row in data["latencies_ms"]:
            if not isinstance(row, dict):
                raise ValueError(f"LatencyProfile: bad row {row!r}")
            stats = {s: row.get(s) for s in STATISTICS}
            if row.get("samples") is not None:
                stats["samples"] = row["samples"]
            table.setdefault(row.get("rate"), {})[row.get("batch_size")] = stats
        return cls(table, key=data.get("key"))

    def save(self, path):
        """Writes the profile as JSON, atomically: a reader never sees half."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def _by_batch(self, rate):
        try:
            return self._table[_as_rate(rate)]
        except KeyError:
            raise ValueError(
                f"LatencyProfile: rate={rate!r} was not profiled. Profiled "
                f"rates: {', '.join(format(r, 'g') for r in self.rates)}"
            ) from None

    def __repr__(self):
        rates = ", ".join(format(r, "g") for r in self.rates)
        return f"LatencyProfile(rates=[{rates}])"


def write_json_atomic(path, data):
    """Writes `data` to `path` through a temporary file and a rename.

    The rename is atomic on POSIX and Windows, so the file at `path` is
    always either the old complete version or the new one.
    """
    path = pathlib.Path(path)
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    handle, temp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _as_rate(rate):
    value = _number(rate)
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(
            "LatencyProfile: a rate must be a number in (0, 1]. "
            f"Received: rate={rate!r}"
        )
    return value


def _as_batch_size(batch_size):
    value = _number(batch_size)
    if value is None or value != int(value) or value < 1:
        raise ValueError(
            "LatencyProfile: a batch size must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    return int(value)


def _number(value):
    """`value` as a finite float (JSON object keys arrive as strings)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_stats(value, rate, batch_size):
    if not isinstance(value, dict):
        value = {s: value for s in STATISTICS}
    stats = {}
    for statistic in STATISTICS:
        ms = value.get(statistic)
        if (
            isinstance(ms, bool)
            or not isinstance(ms, (int, float))
            or not math.isfinite(ms)
            or ms < 0
        ):
            raise ValueError(
                f"LatencyProfile: rate={rate:g}, batch_size={batch_size}: "
                f"'{statistic}' must be a non-negative number of "
                f"milliseconds. Received: {statistic}={ms!r}"
            )
        stats[statistic] = float(ms)
    samples = value.get("samples")
    if samples is not None:
        if not isinstance(samples, (list, tuple)) or not all(
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0
            for v in samples
        ):
            raise ValueError(
                f"LatencyProfile: rate={rate:g}, batch_size={batch_size}: "
                "'samples' must be a list of non-negative milliseconds."
            )
        stats["samples"] = [float(v) for v in samples]
    return stats
