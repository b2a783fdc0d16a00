"""Soak: `keras-slicing-lite serve` under bursty load and hostile clients for minutes.

    python benchmarks/soak.py [--duration_s 660] [--front asgi] [--rate 60]
        [--peak 4] [--bundle DIR] [--output PATH]

Starts `keras-slicing-lite serve` in its own process on 127.0.0.1 (nothing
leaves the machine) and, from this process, sends for `--duration_s`
seconds:

- good requests: Poisson arrivals at `--rate` per second with `--peak`x
  bursts of 0.4 s every 2.5 s (`live_load.bursty_arrivals`), half JSON and
  half `.npy`, each with a 50 ms deadline, over keep-alive connections;
- stalled clients (one per second): half send part of a request head and
  wait, half announce a 3 MB body and send 20 bytes; each must be answered
  408 or closed by the server within its read timeout;
- cancelling clients (two per second): send a request and hang up unread;
- malformed requests (three per second): bodies from `HOSTILE`, each of
  which must get a 4xx with a JSON error.

Every 10 s it samples the server process: resident memory, open
descriptors, threads, and the counts so far. Reported: answered, late
(missed deadlines), lost (a good request without a 200), 4xx and 5xx
replies, stalled clients dropped, and memory, descriptors and threads
over time. Targets: zero lost, zero 5xx, flat memory and descriptors.

Without `--bundle` it exports the small digits model of the tests (needs
TensorFlow); the serving process imports only keras_slicing_lite. Every
loop is bounded by the duration; the server is stopped with SIGTERM at the
end (or killed after 30 s).
"""

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tflite"))
from benchmarks import live_load  # noqa: E402
from benchmarks.common import print_table  # noqa: E402
from benchmarks.common import write_json  # noqa: E402

SLO_MS = 50
SAMPLE_S = 10
READ_TIMEOUT_S = 2.0
HOSTILE = [
    b"[" * 200_000,
    b'{"inputs": [' + b"1" * 5000 + b"]}",
    b'{"input": ' + b"9" * 400 + b"}",
    b'{"inputs": [[1, 2]], "deadline_ms": ' + b"9" * 400 + b"}",
    b'{"inputs": [[1, 2]], "rate": ' + b"9" * 400 + b"}",
    b'{"inputs": [true]}',
    b'{"inputs": ["0.5"]}',
    b"{not json",
    b'{"inputs": []}',
    b'{"examples": 1}',
    b'{"input": [NaN]}',
]


def export_bundle(workdir):
    """The tests' small sliced CNN, trained briefly on digits, exported."""
    import keras

    import keras_slicing
    from tests.lite.conftest import _sliced_cnn
    from tests.sliced_models import digits_split

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, _ = digits_split()
    model = _sliced_cnn()
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    path = pathlib.Path(workdir) / "bundle"
    keras_slicing.export_tflite(model, path, rates=(1.0, 0.75, 0.5, 0.25))
    return path, x_test[:64].astype("float32")


def process_facts(pid):
    """Resident memory (MiB), open descriptors and threads of `pid`."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {k: 0 for k in (
            "good_sent", "answered", "late", "lost", "rejected_503", "status_4xx",
            "status_5xx", "hostile_sent", "hostile_4xx", "stalled", "stalled_dropped",
            "cancelled")}
        self.errors = []

    def add(self, key, n=1):
        with self.lock:
            self.values[key] += n

    def error(self, message):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(message)


def good_client(host, port, counts, local):
    def call(body, headers, path):
        counts.add("good_sent")
        for attempt in range(2):
            if getattr(local, "connection", None) is None:
                local.connection = http.client.HTTPConnection(host, port, timeout=30)
            try:
                local.connection.request("POST", path, body, headers)
                response = local.connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as error:
                local.connection.close()
                local.connection = None
                if attempt:  # a keep-alive connection closed by the server: retried once
                    counts.add("lost")
                    counts.error(f"good request: {error!r}")
                    return
        if response.status == 200:
            answer = json.loads(data) if path == "/predict" else None
            counts.add("answered")
            if answer is not None and answer["late"]:
                counts.add("late")
            elif answer is None and response.getheader("X-Late") == "1":
                counts.add("late")
        else:
            counts.add("lost")
            counts.add("status_5xx" if response.status >= 500 else "status_4xx")
            if response.status == 503:
                counts.add("rejected_503")
            counts.error(f"good request: {response.status} {data[:120]!r}")
    return call


def stalled_client(host, port, counts, kind):
    counts.add("stalled")
    sock = socket.create_connection((host, port), timeout=READ_TIMEOUT_S * 5)
    try:
        if kind == "head":
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-")
        else:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 3000000\r\n\r\n" + b"[" * 20)
        data = b""
        while True:  # until the server answers and closes, or our timeout
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data or data.startswith(b"HTTP/1.1 408"):
            counts.add("stalled_dropped")
        else:
            counts.error(f"stalled {kind}: {data[:80]!r}")
    except OSError as error:
        counts.error(f"stalled {kind} never dropped: {error!r}")
    finally:
        sock.close()


def cancelling_client(host, port, body, counts):
    counts.add("cancelled")
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", f"/predict?deadline_ms={SLO_MS}", body,
                           {"Content-Type": "application/x-npy"})
    except OSError:
        pass
    connection.close()


def hostile_client(host, port, body, counts):
    counts.add("hostile_sent")
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if 400 <= response.status < 500 and "error" in json.loads(data):
            counts.add("hostile_4xx")
        elif response.status >= 500:
            counts.add("status_5xx")
            counts.error(f"hostile: {response.status} {data[:120]!r}")
        else:
            counts.error(f"hostile: {response.status} {data[:120]!r}")
    except (OSError, http.client.HTTPException, ValueError) as error:
        counts.error(f"hostile: {error!r}")
    finally:
        connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration_s", type=float, default=660.0)
    parser.add_argument("--front", choices=("asgi", "stdlib"), default="asgi")
    parser.add_argument("--rate", type=float, default=60.0, help="good requests per second")
    parser.add_argument("--peak", type=float, default=4.0, help="burst factor")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default="", help="free text stored in the result")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="soak_")
    if args.bundle:
        bundle, x = pathlib.Path(args.bundle), None
    else:
        bundle, x = export_bundle(workdir)
    if x is None:
        shape = json.loads((bundle / "manifest.json").read_text())["input"]["shape"][1:]
        x = np.random.default_rng(0).standard_normal((64, *shape)).astype("float32")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable, "-m", "keras_slicing_lite", "serve", str(bundle), "--port", "0",
        "--front", args.front, "--max_queue", "1024", "--num_threads", "1",
        "--reserve_ms", "5", "--read_timeout_s", str(READ_TIMEOUT_S),
        "--max_connections", "128",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if "serving" not in line:
        server.kill()
        raise RuntimeError(f"serve did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    port = int(port)

    json_bodies = [json.dumps({"input": np.round(v, 4).tolist(), "deadline_ms": SLO_MS}).encode()
                   for v in x[:16]]
    npy_bodies = []
    for v in x[:16]:
        buffer = io.BytesIO()
        np.save(buffer, v[None])
        npy_bodies.append(buffer.getvalue())
    arrivals, _ = live_load.bursty_arrivals(args.rate, args.peak, args.duration_s, seed=0)
    counts = Counts()
    local = threading.local()
    call = good_client(host, port, counts, local)
    rng = random.Random(0)
    samples = []
    origin = time.perf_counter()
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.wait(SAMPLE_S):
            with counts.lock:
                snapshot = dict(counts.values)
            samples.append({"t_s": round(time.perf_counter() - origin, 1),
                            **process_facts(server.pid), **snapshot})
            print(f"  {samples[-1]}", flush=True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    samples.append({"t_s": 0.0, **process_facts(server.pid), **counts.values})
    with concurrent.futures.ThreadPoolExecutor(48) as good, \
            concurrent.futures.ThreadPoolExecutor(24) as side:
        next_side = 0.0
        for i, at in enumerate(arrivals):
            wait = at - (time.perf_counter() - origin)
            if wait > 0:
                time.sleep(wait)
            k = i % len(json_bodies)
            if i % 2:
                good.submit(call, json_bodies[k], {"Content-Type": "application/json"}, "/predict")
            else:
                good.submit(call, npy_bodies[k], {"Content-Type": "application/x-npy",
                                                  "Accept": "application/x-npy"},
                            f"/predict?deadline_ms={SLO_MS}")
            now = time.perf_counter() - origin
            while next_side <= now:  # one second's side traffic
                side.submit(stalled_client, host, port, counts, rng.choice(("head", "body")))
                for _ in range(2):
                    side.submit(cancelling_client, host, port, npy_bodies[rng.randrange(16)], counts)
                for _ in range(3):
                    side.submit(hostile_client, host, port, rng.choice(HOSTILE), counts)
                next_side += 1.0
    stop_sampling.set()
    sampler.join()
    time.sleep(READ_TIMEOUT_S + 1)  # let the last stalled connections go
    samples.append({"t_s": round(time.perf_counter() - origin, 1),
                    **process_facts(server.pid), **counts.values})
    stats = _stats(host, port)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()

    first = samples[1] if len(samples) > 2 else samples[0]
    last = samples[-1]
    summary = {
        **counts.values,
        "rss_mib_first_last": [first["rss_mib"], last["rss_mib"]],
        "fds_first_last": [first["fds"], last["fds"]],
        "threads_first_last": [first["threads"], last["threads"]],
        "rss_mib_max": max(s["rss_mib"] for s in samples),
        "fds_max": max(s["fds"] for s in samples),
    }
    print_table(
        f"soak: {args.duration_s:.0f} s, {args.front} front end, {args.rate:g}/s x{args.peak:g} bursts",
        ["answered", "late", "lost", "5xx", "hostile 4xx", "stalled dropped",
         "RSS MiB first/last", "fds first/last"],
        [[summary["answered"], summary["late"], summary["lost"], summary["status_5xx"],
          f"{summary['hostile_4xx']}/{summary['hostile_sent']}",
          f"{summary['stalled_dropped']}/{summary['stalled']}",
          "/".join(map(str, summary["rss_mib_first_last"])),
          "/".join(map(str, summary["fds_first_last"]))]],
    )
    write_json("soak", {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "note": args.note,
        "config": {**vars(args), "slo_ms": SLO_MS, "read_timeout_s": READ_TIMEOUT_S,
                   "good_requests": len(arrivals)},
        "summary": summary,
        "server_stats": stats,
        "errors": counts.errors,
        "samples": samples,
    }, args.output)


def _stats(host, port):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/stats")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


if __name__ == "__main__":
    main()
