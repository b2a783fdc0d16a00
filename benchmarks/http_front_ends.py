"""The two HTTP front ends side by side: uvicorn (ASGI) and the standard library.

    python benchmarks/http_front_ends.py [--rounds 5] [--sequential 300]
        [--concurrent 1200] [--connections 16] [--bundle DIR] [--output PATH]

Starts `keras-slicing-lite serve --front asgi` and `--front stdlib` on the
same bundle, each in its own process on 127.0.0.1, and measures from this
process, in interleaved rounds (so that a busy moment of a shared machine
hits both alike):

- sequential: one keep-alive connection, one request at a time (a single
  example, JSON and `.npy` bodies): the round-trip latency a lone client
  sees, median and 99th percentile;
- concurrent: `--connections` keep-alive connections sending `.npy`
  requests back to back (closed loop): requests per second, median and
  99th percentile latency, and the front end's own cost per request as the
  planner measures it (`/stats`: `cost_ms`, `delivery_ms`).

Reported per front end: medians over rounds, and asgi/stdlib ratios.
Without `--bundle` the digits model of the tests is exported (needs
TensorFlow; the servers import only keras_slicing_lite).
"""

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tflite"))
from benchmarks.common import print_table  # noqa: E402
from benchmarks.common import write_json  # noqa: E402

FRONTS = ("asgi", "stdlib")


def start_server(bundle, front):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "keras_slicing_lite", "serve", str(bundle), "--port", "0",
               "--front", front, "--num_threads", "1", "--max_queue", "4096"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"serve --front {front} did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    return process, (host, int(port))


def _post(connection, path, body, headers):
    start = time.perf_counter()
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status} from {path}")
    return (time.perf_counter() - start) * 1e3


def sequential(address, bodies, count):
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        return [_post(connection, *bodies[i % len(bodies)]) for i in range(count)]
    finally:
        connection.close()


def concurrent_load(address, body, count, connections):
    def worker(n):
        connection = http.client.HTTPConnection(*address, timeout=60)
        try:
            return [_post(connection, *body) for _ in range(n)]
        finally:
            connection.close()

    share = [count // connections + (k < count % connections) for k in range(connections)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        latencies = sum(pool.map(worker, share), [])
    return latencies, count / (time.perf_counter() - start)


def stats(address):
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request("GET", "/stats")
        return json.loads(connection.getresponse().read())["http"]
    finally:
        connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=1200)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.bundle:
        bundle = pathlib.Path(args.bundle)
        shape = json.loads((bundle / "manifest.json").read_text())["input"]["shape"][1:]
        x = np.random.default_rng(0).standard_normal((16, *shape)).astype("float32")
    else:
        from benchmarks.soak import export_bundle

        bundle, x = export_bundle(tempfile.mkdtemp(prefix="fronts_"))
    json_bodies, npy_bodies = [], []
    for v in x[:16]:
        json_bodies.append(("/predict", json.dumps({"input": np.round(v, 4).tolist()}).encode(),
                            {"Content-Type": "application/json"}))
        buffer = io.BytesIO()
        np.save(buffer, v[None].astype("float32"))
        npy_bodies.append(("/predict", buffer.getvalue(), {"Content-Type": "application/x-npy"}))
    servers = {front: start_server(bundle, front) for front in FRONTS}
    results = {front: {k: [] for k in (
        "json_p50_ms", "json_p99_ms", "npy_p50_ms", "npy_p99_ms",
        "concurrent_rps", "concurrent_p50_ms", "concurrent_p99_ms")} for front in FRONTS}
    try:
        for front in FRONTS:  # warm-up: connections, caches, the cost estimates
            sequential(servers[front][1], npy_bodies, 50)
        for round_ in range(args.rounds):
            order = FRONTS if round_ % 2 == 0 else FRONTS[::-1]
            for front in order:
                address = servers[front][1]
                r = results[front]
                for name, bodies in (("json", json_bodies), ("npy", npy_bodies)):
                    latencies = sequential(address, bodies, args.sequential)
                    r[f"{name}_p50_ms"].append(float(np.percentile(latencies, 50)))
                    r[f"{name}_p99_ms"].append(float(np.percentile(latencies, 99)))
                latencies, rps = concurrent_load(address, npy_bodies[0], args.concurrent,
                                                 args.connections)
                r["concurrent_rps"].append(rps)
                r["concurrent_p50_ms"].append(float(np.percentile(latencies, 50)))
                r["concurrent_p99_ms"].append(float(np.percentile(latencies, 99)))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
        front_costs = {front: stats(servers[front][1]) for front in FRONTS}
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    medians = {front: {k: round(statistics.median(v), 3) for k, v in r.items()}
               for front, r in results.items()}
    for front in FRONTS:
        medians[front]["cost_ms"] = front_costs[front]["cost_ms"]
        medians[front]["delivery_ms"] = front_costs[front]["delivery_ms"]
    ratios = {k: round(medians["asgi"][k] / medians["stdlib"][k], 3)
              for k in medians["asgi"] if medians["stdlib"][k]}
    header = ["front end", "json p50", "json p99", "npy p50", "npy p99",
              f"{args.connections} conn req/s", "p50", "p99", "cost ms", "delivery ms"]
    keys = ["json_p50_ms", "json_p99_ms", "npy_p50_ms", "npy_p99_ms", "concurrent_rps",
            "concurrent_p50_ms", "concurrent_p99_ms", "cost_ms", "delivery_ms"]
    rows = [[front] + [medians[front][k] for k in keys] for front in FRONTS]
    rows.append(["asgi/stdlib"] + [ratios.get(k, "") for k in keys])
    print_table("HTTP front ends, one example per request (ms; medians over rounds)", header, rows)
    write_json("http_front_ends", {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "note": args.note,
        "config": vars(args),
        "medians": medians,
        "ratios_asgi_over_stdlib": ratios,
        "rounds": results,
    }, args.output)


if __name__ == "__main__":
    main()
