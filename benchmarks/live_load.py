"""Wall-clock load on live servers: in-process API clients, HTTP clients in processes.

Used by `benchmarks/elastic_serving.py`. Imports neither TensorFlow nor
Keras: run as a script, it is one HTTP client process
(`python benchmarks/live_load.py SPEC.json RESULT.json`), started several
times so that JSON encoding and socket work of the clients are not bound by
one interpreter's GIL.
"""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np

import keras_slicing_lite as lite

OUTCOMES = ("cancelled", "rejected", "failed", "dropped")


def bursty_arrivals(base_rate, peak, seconds, seed):
    """Poisson arrivals at `base_rate`/s with `peak`x bursts of 0.4 s every 2.5 s."""
    rng = np.random.default_rng(seed)
    segments, t = [], 0.0
    while t < seconds:
        burst = t + 1.05
        segments += [(t, burst, base_rate), (burst, burst + 0.4, peak * base_rate),
                     (burst + 0.4, t + 2.5, base_rate)]
        t += 2.5
    times, in_burst = [], []
    for start, end, rate in segments:
        end = min(end, seconds)
        if end <= start:
            continue
        count = rng.poisson(rate * (end - start))
        times.append(np.sort(rng.uniform(start, end, count)))
        in_burst.append(np.full(count, rate > base_rate))
    order = np.argsort(np.concatenate(times), kind="stable")
    return np.concatenate(times)[order], np.concatenate(in_burst)[order]


def _pace(origin, at):
    wait = at - (time.perf_counter() - origin)
    if wait > 0:
        time.sleep(wait)


def closed_loop_capacity(bundle, profile, rates, x, max_batch, count=1000):
    """Requests per second a live server answers when its queue never empties.

    Everything is submitted at once from this thread, so the figure includes
    the server's Python work per request and the submissions competing for
    the interpreter, as under load: the capacity that open-loop load is
    measured against.
    """
    server = lite.ElasticServer(
        bundle, profile, rates=rates, max_batch_size=max_batch, clock="real"
    ).start()
    try:
        futures = [server.submit(x[i % len(x)]) for i in range(count)]
        done, _ = concurrent.futures.wait(futures, timeout=120)
    finally:
        server.stop(timeout=10)
    responses = [f.result() for f in done]
    span = max(r.finish_s for r in responses) - min(r.arrival_s for r in responses)
    return len(responses) / span


def http_capacity(bundle_path, rates, x, cfg, workdir, count=600, body=None):
    """Requests per second `serve` answers over HTTP with every connection busy.

    All `count` requests are due at once, none cancelled: each connection
    sends its next request as soon as the previous one is answered. `body`
    ("npy" or "json") overrides `cfg.http_body`.
    """
    closed = types.SimpleNamespace(**{
        **vars(cfg), "cancel_fraction": 0.0, "http_body": body or cfg.http_body})
    records, _, _ = live_http_run(
        bundle_path, rates, np.zeros(count), x, closed, 0, workdir)
    latencies = [r[0] for r in records if isinstance(r, tuple)]
    return len(latencies) / (max(latencies) / 1e3) if latencies else 0.0


def live_api_run(bundle, profile, rates, arrivals, x, cfg, seed):
    """`cfg.clients` threads submit through `ElasticServer.submit` at each arrival."""
    server = lite.ElasticServer(
        bundle, profile, rates=rates, max_batch_size=cfg.max_batch,
        clock="real", reserve_ms=cfg.reserve_ms, max_queue=4096,
    ).start()
    outcome = [None] * len(arrivals)
    sent = np.full(len(arrivals), np.nan)
    origin = time.perf_counter()

    def client(k):
        rng = np.random.default_rng(seed + k)
        for i in range(k, len(arrivals), cfg.clients):
            _pace(origin, arrivals[i])
            sent[i] = time.perf_counter() - origin
            try:
                future = server.submit(x[i], deadline_ms=cfg.slo_ms)
            except lite.QueueFullError:
                outcome[i] = "rejected"
                continue
            if rng.random() < cfg.cancel_fraction and future.cancel():
                outcome[i] = "cancelled"
            else:
                outcome[i] = future

    threads = [threading.Thread(target=client, args=(k,)) for k in range(cfg.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    futures = [o for o in outcome if isinstance(o, concurrent.futures.Future)]
    concurrent.futures.wait(futures, timeout=60)
    server.stop(timeout=10)
    records = []
    for o in outcome:
        if isinstance(o, str):
            records.append(o)
        elif not o.done():
            records.append("dropped")
        elif o.exception() is not None:
            records.append("failed")
        else:
            r = o.result()
            records.append((r.latency_ms, r.late, r.prediction, r.rate))
    return records, sent, time.perf_counter() - origin


def live_http_run(bundle_path, rates, arrivals, x, cfg, seed, workdir):
    """Open-loop HTTP clients in `cfg.http_procs` processes against `serve`.

    `cfg.http_body` is the request body: `"npy"` (`application/x-npy`, the
    deadline in the query) or `"json"`. The server is `keras-slicing-lite serve` in its own process (as
    deployed), reusing the profile cached beside the bundle. Each client
    process takes every `http_procs`-th arrival and keeps
    `http_clients / http_procs` keep-alive connections.
    """
    command = [
        sys.executable, "-m", "keras_slicing_lite", "serve", str(bundle_path),
        "--port", "0", "--rates", ",".join(f"{r:g}" for r in rates),
        "--max_batch_size", str(cfg.max_batch), "--max_queue", "4096",
        "--reserve_ms", str(cfg.reserve_ms), "--num_threads", str(cfg.threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if "serving" not in line:
        server.kill()
        raise RuntimeError(f"keras-slicing-lite serve did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    # A few distinct bodies, rounded: JSON of 3,072 full-precision floats
    # would measure float printing more than serving. The npy bodies hold
    # the same rounded values, as float32.
    rounded = [np.round(x[k], 4) for k in range(min(64, len(x)))]
    if cfg.http_body == "npy":
        pool = [base64.b64encode(_npy(v[None].astype("float32"))).decode() for v in rounded]
    else:
        pool = [v.tolist() for v in rounded]
    pick = np.arange(len(arrivals)) % len(pool)
    cancel = np.random.default_rng(seed).random(len(arrivals)) < cfg.cancel_fraction
    clients = []
    for p in range(cfg.http_procs):
        spec = os.path.join(workdir, f"http_client_{p}.json")
        with open(spec, "w") as f:
            json.dump({
                "host": host, "port": int(port), "slo_ms": cfg.slo_ms,
                "body": cfg.http_body,
                "connections": max(1, cfg.http_clients // cfg.http_procs),
                "pool": pool, "indices": list(range(p, len(arrivals), cfg.http_procs)),
                "arrivals": arrivals.tolist(), "pick": pick.tolist(),
                "cancel": cancel.tolist(),
            }, f)
        result = spec.replace(".json", "_result.json")
        clients.append((subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), spec, result],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        ), result))
    for process, _ in clients:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("an HTTP client process did not start")
    start_at = time.time() + 0.2
    for process, _ in clients:
        process.stdin.write(f"{start_at!r}\n")
        process.stdin.flush()
    records = ["dropped"] * len(arrivals)
    sent = np.full(len(arrivals), np.nan)
    errors = []
    for process, result in clients:
        process.wait(timeout=300)
        with open(result) as f:
            out = json.load(f)
        for i, record, at in zip(out["indices"], out["records"], out["sent"]):
            records[i] = tuple(record) if isinstance(record, list) else record
            sent[i] = at
        errors += out["errors"]
    seconds = float(np.nanmax(sent)) if np.isfinite(sent).any() else 0.0
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    if errors:
        print(f"  HTTP client errors ({len(errors)}): {errors[:3]}")
    return records, sent, seconds


def summarize_live(runs, arrivals, labels, in_burst):
    """One summary of `runs` [(records, sent, seconds)], each on `arrivals`."""
    rounds = len(runs)
    records = [r for run, _, _ in runs for r in run]
    sent = np.concatenate([s for _, s, _ in runs])
    seconds = sum(s for _, _, s in runs)
    in_burst = np.tile(in_burst, rounds)
    labels = None if labels is None else np.tile(labels, rounds)
    answered = [(i, r) for i, r in enumerate(records) if isinstance(r, tuple)]
    counts = {k: sum(r == k for r in records) for k in OUTCOMES}
    latency = np.array([r[0] for _, r in answered])
    late = np.array([r[1] for _, r in answered])
    burst = np.array([in_burst[i] for i, _ in answered], bool)
    rates = np.array([r[3] for _, r in answered])
    lag = (sent - np.tile(arrivals, rounds))[np.isfinite(sent)] * 1e3
    # The offered rate the clients achieved: requests over the span in which
    # they sent them (the trace's own span when they kept up).
    offered = []
    for _, s, _ in runs:
        s = s[np.isfinite(s)]
        if len(s) > 1 and s.max() > s.min():
            offered.append(len(s) / float(s.max() - s.min()))
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean([r[2] == labels[i] for i, r in answered]))
    return {
        "requests": len(records),
        "answered": len(answered),
        **counts,
        "wall_s": seconds,
        "rounds": rounds,
        "offered_per_s": float(np.mean(offered)) if offered else None,
        "trace_per_s": len(arrivals) / max(1e-9, float(arrivals[-1] - arrivals[0])),
        "client_lag_p99_ms": float(np.percentile(lag, 99)) if len(lag) else None,
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        # Missed among requests that were to be answered (not cancelled).
        "miss_rate": float((late.sum() + counts["rejected"] + counts["failed"]
                            + counts["dropped"]) / max(1, len(records) - counts["cancelled"])),
        "miss_rate_in_bursts": float(late[burst].mean()) if burst.any() else None,
        "accuracy": accuracy,
        "width_mix": {f"{r:g}": float(np.mean(rates == r)) for r in sorted(set(rates))},
    }


def _http_client(spec_path, result_path):
    """One client process: open-loop requests over keep-alive connections."""
    with open(spec_path) as f:
        spec = json.load(f)
    host, port, slo = spec["host"], spec["port"], spec["slo_ms"]
    if spec["body"] == "npy":
        bodies = [base64.b64decode(x) for x in spec["pool"]]
        path, headers = f"/predict?deadline_ms={slo}", {"Content-Type": "application/x-npy"}
    else:
        bodies = [json.dumps({"input": x, "deadline_ms": slo}).encode() for x in spec["pool"]]
        path, headers = "/predict", {"Content-Type": "application/json"}
    indices, arrivals = spec["indices"], spec["arrivals"]
    local = threading.local()
    records, sent, errors = {}, {}, []

    def call(i, scheduled):
        # Sent when a connection takes it: a request waiting for a free
        # connection counts as client lag.
        sent[i] = time.perf_counter() - origin
        body = bodies[spec["pick"][i]]
        if spec["cancel"][i]:
            # A client that gives up: sends, then closes without reading.
            connection = http.client.HTTPConnection(host, port, timeout=60)
            connection.request("POST", path, body, headers)
            connection.close()
            records[i] = "cancelled"
            return
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            local.connection.request("POST", path, body, headers)
            response = local.connection.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException) as error:
            local.connection = None
            records[i] = "dropped"
            errors.append(repr(error))
            return
        if response.status == 503 and "queue is full" in answer.get("error", ""):
            records[i] = "rejected"
        elif response.status != 200:
            records[i] = "failed"
        else:
            # From the scheduled arrival: a request waiting for a free
            # connection is waiting for the service.
            latency = (time.perf_counter() - scheduled) * 1e3
            if "outputs" in answer:  # a batch (of one) sent as npy
                answer = {key: answer[plural][0] for key, plural in (
                    ("late", "late"), ("prediction", "predictions"), ("rate", "rates"))}
            late = answer["late"] or latency > slo
            records[i] = [latency, late, answer["prediction"], answer["rate"]]

    def connect(barrier):
        # Every pool thread opens its keep-alive connection before the
        # clock starts (the barrier makes the pool start them all): opened
        # on the first request, in the first burst, the accepts and the
        # server's new handler threads would be counted as serving time.
        local.connection = http.client.HTTPConnection(host, port, timeout=60)
        local.connection.request("GET", "/health")
        local.connection.getresponse().read()
        barrier.wait(timeout=60)

    with concurrent.futures.ThreadPoolExecutor(spec["connections"]) as pool:
        barrier = threading.Barrier(spec["connections"])
        for opened in [pool.submit(connect, barrier) for _ in range(spec["connections"])]:
            opened.result()
        print("ready", flush=True)
        start_at = float(sys.stdin.readline())
        origin = time.perf_counter() + (start_at - time.time())
        for i in indices:
            _pace(origin, arrivals[i])
            pool.submit(call, i, origin + arrivals[i])
    with open(result_path, "w") as f:
        json.dump({
            "indices": indices,
            "records": [records.get(i, "dropped") for i in indices],
            "sent": [sent[i] for i in indices],
            "errors": errors[:20],
        }, f)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


if __name__ == "__main__":
    _http_client(sys.argv[1], sys.argv[2])
