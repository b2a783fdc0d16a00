"""Latency profiles of a bundle on this device, and choosing a width by budget.

The implementation of `Bundle.profile` and `Bundle.select_rate`.
"""

import numbers
import os
import pathlib
import platform
import time
import warnings

import numpy as np

from keras_slicing_lite import runtime
from keras_slicing_lite.inputs import format_shape
from keras_slicing_lite.latency_profile import LatencyProfile

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def profile(bundle, batch_sizes, repeats, warmup, cache, refresh):
    """See `Bundle.profile`."""
    sizes = _check_batch_sizes(batch_sizes)
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"profile: {name} must be an integer >= {low}. "
                f"Received: {name}={value!r}"
            )
    cache_path = _cache_path(bundle, cache)
    key = _profile_key(bundle, sizes)
    if cache_path is not None and not refresh and cache_path.exists():
        try:
            cached = LatencyProfile.load(cache_path)
        except (OSError, ValueError) as error:
            warnings.warn(
                f"profile: ignoring unreadable latency cache {cache_path} "
                f"({error}); measuring again.",
                stacklevel=3,
            )
        else:
            if cached.key == key:
                return cached
    result = _measure(bundle, sizes, repeats, warmup, key)
    if cache_path is not None:
        try:
            result.save(cache_path)
        except OSError as error:
            warnings.warn(
                f"profile: could not write the latency cache {cache_path}: "
                f"{error}. Pass cache=PATH to a writable file.",
                stacklevel=3,
            )
    return result


def select_rate(
    bundle,
    latency_budget_ms,
    macs_budget,
    batch_size,
    profile,
    statistic,
    fallback_to_narrowest,
):
    """See `Bundle.select_rate`."""
    if latency_budget_ms is None and macs_budget is None:
        raise ValueError(
            "select_rate: give latency_budget_ms, macs_budget or both. "
            "Received: latency_budget_ms=None, macs_budget=None"
        )
    for name, value in (
        ("latency_budget_ms", latency_budget_ms),
        ("macs_budget", macs_budget),
    ):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not value >= 0
        ):
            raise ValueError(
                f"select_rate: {name} must be a number >= 0. "
                f"Received: {name}={value!r}"
            )
    if macs_budget is not None:
        missing = [r for r in bundle.rates if bundle.rate_entry(r).get("macs") is None]
        if missing:
            raise ValueError(
                "select_rate: the manifest has no MACs for rates "
                f"{format_rates(missing)}, so macs_budget cannot be used."
            )
    if latency_budget_ms is not None and profile is None:
        profile = bundle.profile()
    costs = []
    for rate in bundle.rates:
        cost = {}
        if latency_budget_ms is not None:
            cost["latency_ms"] = profile.latency_ms(rate, batch_size, statistic)
        if macs_budget is not None:
            cost["macs"] = bundle.rate_entry(rate)["macs"]
        fits = (
            latency_budget_ms is None or cost["latency_ms"] <= latency_budget_ms
        ) and (macs_budget is None or cost["macs"] <= macs_budget)
        if fits:
            return rate
        costs.append(cost)
    if fallback_to_narrowest:
        return bundle.rates[-1]
    raise ValueError(
        "select_rate: no rate fits the budget. Received: "
        f"latency_budget_ms={latency_budget_ms}, macs_budget={macs_budget}"
        f" (batch_size={batch_size}); the narrowest rate "
        f"{bundle.rates[-1]:g} costs {costs[-1]}. Raise the budget or pass "
        "fallback_to_narrowest=True."
    )

def _cache_path(bundle, cache):
    if cache is True:
        resolved = bundle.path.resolve()
        return resolved.with_name(resolved.name + ".latency.json")
    if cache is False or cache is None:
        return None
    if isinstance(cache, (str, os.PathLike)):
        return pathlib.Path(cache)
    raise ValueError(
        "profile: cache must be True, False or a file path. "
        f"Received: cache={cache!r}"
    )

def _profile_key(bundle, sizes):
    return {
        "sha256": [bundle.rate_entry(r)["sha256"].lower() for r in bundle.rates],
        "runtime": runtime.runtime_name(),
        "runtime_version": runtime.runtime_version(),
        "num_threads": bundle.num_threads,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "batch_sizes": list(sizes),
    }

def _measure(bundle, sizes, repeats, warmup, key):
    if any(d is None for d in bundle.input_shape[1:]):
        raise ValueError(
            "profile: the input shape has variable dimensions "
            f"{format_shape(bundle.input_shape)}; profiling needs a fixed "
            "example shape."
        )
    # Times the bare interpreter call, with one cached interpreter per
    # profiled batch size.
    bundle.keep_interpreters(len(sizes))
    rng = np.random.default_rng(0)
    batches = {}
    for size in sizes:
        shape = (size, *bundle.input_shape[1:])
        if np.dtype(bundle.input_dtype).kind == "f":
            batches[size] = rng.standard_normal(shape).astype(np.dtype(bundle.input_dtype))
        elif bundle.input_quantization[0] == 0:
            # Token ids: any valid id costs the same, and id 0 is always valid.
            batches[size] = np.zeros(shape, np.dtype(bundle.input_dtype))
        else:
            info = np.iinfo(np.dtype(bundle.input_dtype))
            batches[size] = rng.integers(
                info.min, info.max, shape, endpoint=True
            ).astype(np.dtype(bundle.input_dtype))
    cells = [(r, s) for s in sizes for r in bundle.rates]
    for rate, size in cells:
        for _ in range(warmup + 1):
            bundle.run_prepared(batches[size], rate)
    samples = {cell: [] for cell in cells}
    for _ in range(repeats):
        for rate, size in cells:
            start = time.perf_counter_ns()
            bundle.run_prepared(batches[size], rate)
            samples[(rate, size)].append((time.perf_counter_ns() - start) / 1e6)
    table = {}
    for (rate, size), values in samples.items():
        values = np.asarray(values)
        table.setdefault(rate, {})[size] = {
            "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)),
            "mean": float(values.mean()),
        }
    return LatencyProfile(table, key=key)

def _check_batch_sizes(batch_sizes):
    try:
        sizes = sorted(set(batch_sizes))
    except TypeError:
        sizes = None
    if not sizes or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
        for s in sizes
    ):
        raise ValueError(
            "profile: batch_sizes must be a non-empty list of positive "
            f"integers. Received: batch_sizes={batch_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


def format_rates(rates):
    """`1, 0.5, 0.25`: rates as error messages list them."""
    return ", ".join(format(r, "g") for r in rates)

