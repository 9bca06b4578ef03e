#!/usr/bin/env python3
"""isopod's benchmark harness: figures, not pass/fail.

Prints, for the release build on this machine:
  - `isopod run` from process start to its first response, the snapshot
    size, and RSS after 1,000 requests;
  - hello-world requests/s on one core: isopod (one worker thread),
    `deno serve`, workerd and a bare hyper server
    (crates/isopod-server/examples/bare_hyper.rs, the HTTP ceiling), each
    pinned to core 0 and loaded by wrk (-t1 -c32) pinned to core 1, in
    interleaved rounds after a discarded warm-up round: the median
    requests/s of each, the per-round ratios isopod/deno and
    isopod/workerd (median, min, max), the dispatch overhead (what a request
    costs isopod's saturated thread beyond hyper's own work), and isopod on
    2 worker threads;
  - the same rounds for a realistic handler (bench/handlers/realistic.js:
    a router, a JSON body parsed, a JSON response, a SHA-256 digest; wrk
    posts bench/handlers/realistic.lua's order) on isopod, deno and workerd;
  - warm dispatch latency (sequential keep-alive requests, p50/p99);
  - RSS per idle warm instance against the number of apps (10 to 1,000),
    small and the ~950 KB real-world bundle (bench/realworld): each app
    deployed and asked once, RSS read past the 2 s idle shrink; and
    blank-isolate creation and cold-miss latency from the pool's own
    statistics;
  - a 215 KiB framework bundle's cold start (Hono, isolate-per-request),
    from the version's code cache and compiled from source
    (ISOPOD_CODE_CACHE=off);
  - the first request of never-seen apps (200 per case), small and real,
    with a spare ready and without, version snapshots on (and off, for the
    real app), as the client waits for it (request sent to response
    received), p50/p99 and every sample;
  - a process started for the real-world app, to its first response:
    `isopod run`, `deno serve` and workerd in interleaved rounds;
  - a CPU-bound app's requests/s on 1 and 2 worker threads (the second
    thread serves it through a replica), with the ratio;
  - hit rate under a Zipf load over 1,000 apps with max_instances 200;
  - a well-behaved app's latency p50/p99 alone and next to apps that loop and
    bomb memory or burn WebCrypto CPU (each request of theirs killed), with
    the p99 ratio;
  - the limit enforcer's CPU-clock reads per hello-world request and their
    cost next to the request's own (counted and timed inside isopod).

Each target is printed next to its figure, met or missed by how much:
first request of a never-seen real app p99 < 5 ms, of a small app < 1 ms;
RSS per idle warm instance <= 2 MiB (hello world) and <= 6 MiB (real);
hello-world and realistic-handler requests/s >= 1.0x deno serve; the
neighbour p99 ratio <= 2x.

Every figure, with the raw samples the charts need, goes to
target/bench/results.json (or $ISOPOD_BENCH_OUT), and the run ends by
writing BENCHMARKS.md at the repository's root; scripts/bench.sh then draws
its charts (bench/charts, into docs/bench/).

Usage: scripts/bench.sh (builds the release binaries, installs wrk, deno and
workerd, builds the bundles, runs this and draws the charts).
ISOPOD_BENCH_QUICK=1 for a short run (20 apps per first-request case, 100
apps for RSS, 2 rounds of 3 s): a check that the harness works, not figures.
"""
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/isopod/target"))
ISOPOD = os.environ.get("ISOPOD_BIN", os.path.join(TARGET, "release", "isopod"))
PEERS = os.environ.get("ISOPOD_PEERS", os.path.expanduser("~/.cache/isopod-peers"))
DENO = os.path.join(PEERS, "deno", "package", "deno")
WORKERD = os.path.join(PEERS, "workerd", "package", "bin", "workerd")
QUICK = os.environ.get("ISOPOD_BENCH_QUICK") == "1"
DURATION = "3s" if QUICK else "8s"
WARMUP = "2s" if QUICK else "3s"
ROUNDS = 2 if QUICK else 5
TOKEN = "bench-token-0123456789"
HELLO = os.path.join(ROOT, "examples", "hello.js")
REALISTIC = os.path.join(ROOT, "bench", "handlers", "realistic.js")
REALISTIC_LUA = os.path.join(ROOT, "bench", "handlers", "realistic.lua")
BARE_HYPER = os.path.join(TARGET, "release", "examples", "bare_hyper")
OUT = os.environ.get("ISOPOD_BENCH_OUT") or os.path.join(ROOT, "target", "bench", "results.json")
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
# Below this much available memory the RSS section stops adding apps.
MEMORY_FLOOR_KIB = 1536 * 1024

# Every figure of the run, written to OUT after each section.
RESULTS = {"quick": QUICK, "meta": {}, "sections": {}, "targets": [], "errors": []}
# Processes started and not yet stopped, stopped when a section fails.
RUNNING = []


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz", headers={"Host": "localhost"})
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def start(args, cpu=None, env=None):
    cmd = ([] if cpu is None else ["taskset", "-c", str(cpu)]) + args
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    RUNNING.append(proc)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc in RUNNING:
        RUNNING.remove(proc)
    # `serve`'s directory (registry, snapshots): hundreds of MB after the
    # first-request section.
    if getattr(proc, "bench_dir", None):
        shutil.rmtree(proc.bench_dir, ignore_errors=True)


def wrk_run(port, host="localhost", threads=1, connections=32, cpu="1", duration=None, script=None,
            path="/", latency=False):
    """wrk's requests/s and its count of non-2xx/3xx answers (with
    `latency`, also its p50/p99 in ms); the client pinned to `cpu` (None:
    any core), `script` a wrk Lua file."""
    pin = [] if cpu is None else ["taskset", "-c", cpu]
    extra = ([] if script is None else ["-s", script]) + (["--latency"] if latency else [])
    out = subprocess.run(
        pin + ["wrk", f"-t{threads}", f"-c{connections}", "-d" + (duration or DURATION), "-H", f"Host: {host}"]
        + extra + [f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def percentile_ms(label):
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    measured = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
    }
    if latency:
        measured.update(p50_ms=percentile_ms("50"), p99_ms=percentile_ms("99"))
    return measured


def wrk(port, host="localhost", threads=1, connections=32, cpu="1"):
    """Requests/s; the client pinned to `cpu` (None: any core)."""
    return wrk_run(port, host, threads, connections, cpu)["rps"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def meminfo_kib(field):
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(len(values) * p + 0.999) - 1))]


def num(value):
    """A figure with the decimals its size needs."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Admin:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def call(self, method, path, body=None, content_type=None):
        headers = {"Authorization": f"Bearer {TOKEN}", "Host": "admin"}
        if content_type:
            headers["content-type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None


def serve(max_instances, threads=2, spares=2, env=None, extra=""):
    port, admin_port = free_port(), free_port()
    directory = tempfile.mkdtemp(prefix="isopod-bench-")
    config = os.path.join(directory, "isopod.toml")
    with open(config, "w") as f:
        f.write(
            f'listen = "127.0.0.1:{port}"\nthreads = {threads}\nmax_instances = {max_instances}\n'
            f'spares_per_thread = {spares}\nadmin_listen = "127.0.0.1:{admin_port}"\nadmin_token = "{TOKEN}"\n'
            f'data_dir = "{directory}/data"\n{extra}'
        )
    proc = start([ISOPOD, "serve", "--config", config], env=dict(os.environ, **(env or {})))
    proc.bench_dir = directory
    wait_listening(admin_port)
    return proc, port, Admin(admin_port)


def app_source(i):
    return f"let n = 0; export default {{ fetch() {{ n++; return new Response('app{i} ' + n); }} }};"


def real_manifest(source):
    # preact draws Math.random() at top level: its snapshot shares the values.
    return json.dumps({"bundle": source, "snapshot": "share-random"})


def get(conn, host, path="/"):
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    response.read()
    return response.status


def workerd_config(directory, bundle, port):
    """A workerd config serving `bundle` (copied into `directory`) on
    127.0.0.1:`port`; its path."""
    name = os.path.basename(bundle)
    if os.path.dirname(os.path.abspath(bundle)) != os.path.abspath(directory):
        shutil.copy(bundle, os.path.join(directory, name))
    config = os.path.join(directory, f"config-{port}.capnp")
    with open(config, "w") as f:
        f.write(
            'using Workerd = import "/workerd/workerd.capnp";\n'
            'const config :Workerd.Config = (\n'
            '  services = [ (name = "main", worker = .app) ],\n'
            f'  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],\n'
            ');\n'
            'const app :Workerd.Worker = (\n'
            f'  modules = [ (name = "{name}", esModule = embed "{name}") ],\n'
            '  compatibilityDate = "2025-09-01",\n'
            ');\n'
        )
    return config


class Section:
    """One section of the run: prints its heading, and keeps its figures
    (`data`, in results.json) with the tables and notes BENCHMARKS.md shows."""

    def __init__(self, key, title):
        print(f"\n## {title}", flush=True)
        self.data = {"title": title, "tables": [], "notes": []}
        RESULTS["sections"][key] = self.data

    def table(self, *columns):
        self.data["tables"].append({"columns": list(columns), "rows": []})

    def row(self, *cells):
        self.data["tables"][-1]["rows"].append([str(cell) for cell in cells])

    def note(self, text, echo=True):
        if echo:
            print(text, flush=True)
        self.data["notes"].append(text)


def target(name, value, op, goal, unit, of=""):
    """Judges `value` against the target `op goal` (op "<", "<=" or ">="),
    records the verdict and returns it as text: "target < 5 ms: met", or
    "target < 5 ms: missed by 17 ms (4.4x)"."""
    space = "" if unit == "x" else " "
    stated = f"target {op} {f'{goal:.1f}' if unit == 'x' else f'{goal:g}'}{space}{unit}{of}"
    if op == ">=":
        met = value >= goal
        miss = f"missed by {goal - value:.2f}{space}{unit} (at {value:.2f}{space}{unit}{of})"
    else:
        met = value < goal if op == "<" else value <= goal
        miss = f"missed by {num(value - goal)}{space}{unit} ({value / goal:.1f}x)"
    text = f"{stated}: {'met' if met else miss}"
    RESULTS["targets"].append({"name": name, "value": value, "measured": f"{num(value)}{space}{unit}{of}",
                               "op": op, "goal": goal, "unit": unit + of, "met": met, "text": text})
    return text


def bench_startup():
    sec = Section("startup", "isopod run: startup and memory (examples/hello.js, 2 threads)")
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [ISOPOD, "run", HELLO, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    RUNNING.append(proc)
    first = None
    while first is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if get(conn, "localhost") == 200:
                first = time.monotonic() - started
        except OSError:
            time.sleep(0.001)
    listening = json.loads(proc.stderr.readline())
    conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(8)]
    for i in range(1000):
        assert get(conns[i % len(conns)], "localhost", f"/req/{i}") == 200
    rss = rss_kib(proc.pid)
    stop(proc)
    print(f"start to first response  {first * 1000:8.1f} ms (server's own start-up {listening['startup_ms']:.1f} ms)")
    print(f"snapshot                 {listening['snapshot_bytes'] / 1e6:8.2f} MB")
    print(f"RSS after 1,000 requests {rss / 1024:8.1f} MiB")
    sec.data.update(
        start_to_first_response_ms=first * 1000,
        server_startup_ms=listening["startup_ms"],
        snapshot_bytes=listening["snapshot_bytes"],
        rss_after_1000_requests_mib=rss / 1024,
    )
    sec.table("figure", "value")
    sec.row("process start to first response", f"{first * 1000:.1f} ms")
    sec.row("the server's own start-up", f"{listening['startup_ms']:.1f} ms")
    sec.row("startup snapshot", f"{listening['snapshot_bytes'] / 1e6:.2f} MB")
    sec.row("RSS after 1,000 requests", f"{rss / 1024:.1f} MiB")


def throughput_rounds(sec, bundle, script=None, hyper=False):
    """Requests/s of `bundle` on isopod (one worker thread), deno serve,
    workerd and (with `hyper`) bare hyper, all started at once, each pinned
    to core 0 and loaded in turn by wrk pinned to core 1: a warm-up round
    (discarded), then ROUNDS rounds. Prints and records each runtime's
    median and the per-round ratios of isopod to the others."""
    workdir = tempfile.mkdtemp(prefix="isopod-bench-")
    servers = [
        ("isopod", ISOPOD, lambda port: [ISOPOD, "run", bundle, "--port", str(port), "--threads", "1"]),
        ("deno serve", DENO, lambda port: [DENO, "serve", "--quiet", "--port", str(port), bundle]),
        ("workerd", WORKERD, lambda port: [WORKERD, "serve", workerd_config(workdir, bundle, port)]),
    ]
    if hyper:
        servers.append(("bare hyper", BARE_HYPER, lambda port: [BARE_HYPER, str(port)]))
    env = dict(os.environ, DENO_NO_UPDATE_CHECK="1")
    ports, procs = {}, []
    for name, binary, command in servers:
        if not os.path.exists(binary):
            sec.note(f"{name}: not measured, {binary} is missing (scripts/install-peers.sh, scripts/bench.sh)")
            continue
        port = free_port()
        procs.append(start(command(port), cpu=0, env=env))
        wait_listening(port)
        ports[name] = port
    warmup = {name: wrk_run(port, duration=WARMUP, script=script)["rps"] for name, port in ports.items()}
    rounds = {name: [] for name in ports}
    non_2xx = {name: 0 for name in ports}
    for _ in range(ROUNDS):
        for name, port in ports.items():
            run = wrk_run(port, script=script)
            rounds[name].append(run["rps"])
            non_2xx[name] += run["non_2xx"]
    for proc in procs:
        stop(proc)
    shutil.rmtree(workdir, ignore_errors=True)

    load = f"taskset -c 1 wrk -t1 -c32 -d{DURATION} -H 'Host: localhost'" + (
        f" -s {os.path.relpath(script, ROOT)}" if script else "") + " http://127.0.0.1:PORT/"
    sec.note(f"{ROUNDS} rounds after a {WARMUP[:-1]} s warm-up round (discarded); each round loads every server in turn "
             f"with `{load}`; servers on core 0: `taskset -c 0 isopod run BUNDLE --threads 1`, "
             f"`taskset -c 0 deno serve --quiet BUNDLE`, `taskset -c 0 workerd serve CONFIG` (BUNDLE as an esModule)"
             + (", `taskset -c 0 bare_hyper PORT`" if hyper else "") + ".", echo=False)
    summary = []
    sec.table("runtime", "requests/s, median", "min", "max", "rounds", "warm-up")
    for name, values in rounds.items():
        row = {"runtime": name, "median": statistics.median(values), "min": min(values), "max": max(values),
               "rounds": values, "warmup": warmup[name], "non_2xx": non_2xx[name]}
        summary.append(row)
        print(f"{name:12} median {row['median']:10,.0f} requests/s   rounds "
              + " ".join(f"{v:,.0f}" for v in values) + f"   (warm-up {warmup[name]:,.0f})")
        sec.row(name, f"{row['median']:,.0f}", f"{row['min']:,.0f}", f"{row['max']:,.0f}",
                ", ".join(f"{v:,.0f}" for v in values), f"{warmup[name]:,.0f}")
        if non_2xx[name]:
            sec.note(f"{name}: {non_2xx[name]} answers were not 2xx/3xx: its figure is not comparable")
    ratios = []
    if "isopod" in rounds:
        sec.table("ratio", "median of the per-round ratios", "min", "max")
        for other in ("deno serve", "workerd", "bare hyper"):
            if other not in rounds:
                continue
            per_round = [i / o for i, o in zip(rounds["isopod"], rounds[other])]
            ratio = {"name": f"isopod/{other}", "median": statistics.median(per_round), "min": min(per_round),
                     "max": max(per_round), "per_round": per_round}
            ratios.append(ratio)
            print(f"{ratio['name']:22} {ratio['median']:5.2f}   (per-round min {ratio['min']:.2f}, max {ratio['max']:.2f})")
            sec.row(ratio["name"], f"{ratio['median']:.2f}", f"{ratio['min']:.2f}", f"{ratio['max']:.2f}")
    sec.data.update(summary=summary, ratios=ratios, rounds=ROUNDS, duration=DURATION, warmup_duration=WARMUP)
    return {row["runtime"]: row["median"] for row in summary}, {r["name"]: r for r in ratios}


def bench_throughput():
    sec = Section("throughput_hello", "hello world, requests/s on one core, interleaved rounds "
                  "(wrk -t1 -c32 on core 1, each server on core 0)")
    medians, ratios = throughput_rounds(sec, HELLO, hyper=True)
    isopod, deno, hyper = medians.get("isopod"), medians.get("deno serve"), medians.get("bare hyper")
    if isopod and deno:
        sec.note(target("hello world requests/s, isopod/deno serve", ratios["isopod/deno serve"]["median"],
                        ">=", 1.0, "x", " deno serve"))
    if isopod and hyper:
        # What a request costs isopod's thread beyond hyper's own HTTP work:
        # the JavaScript call, the pool, the windows (core 0 saturated).
        overhead = 1e6 / isopod - 1e6 / hyper
        sec.note(f"dispatch overhead, 1 core: {overhead:.1f} µs per request "
                 f"(isopod {1e6 / isopod:.1f} µs, hyper {1e6 / hyper:.1f} µs, from the medians)")
        sec.data["dispatch_overhead_us"] = overhead
        if deno:
            sec.note(f"deno, same measure: {1e6 / deno - 1e6 / hyper:.1f} µs per request")
    # isopod on two worker threads, both cores (wrk shares core 1), once.
    port = free_port()
    proc = start(["taskset", "-c", "0,1", ISOPOD, "run", HELLO, "--port", str(port), "--threads", "2"])
    wait_listening(port)
    two = wrk(port)
    stop(proc)
    sec.data["isopod_2_threads"] = two
    line = f"isopod 2 threads (cores 0,1, wrk on core 1): {two:,.0f} requests/s"
    if isopod:
        line += f", {two / isopod:.2f}x the 1-thread median"
    sec.note(line)


def bench_realistic():
    sec = Section("throughput_realistic", "a realistic handler (bench/handlers/realistic.js, POST /api/orders), "
                  "requests/s on one core, interleaved rounds (wrk -t1 -c32 on core 1, each server on core 0)")
    _, ratios = throughput_rounds(sec, REALISTIC, script=REALISTIC_LUA)
    if "isopod/deno serve" in ratios:
        sec.note(target("realistic handler requests/s, isopod/deno serve", ratios["isopod/deno serve"]["median"],
                        ">=", 1.0, "x", " deno serve"))


def bench_warm_latency():
    sec = Section("warm_latency", "warm dispatch, sequential keep-alive requests (client-observed)")
    port = free_port()
    proc = start([ISOPOD, "run", HELLO, "--port", str(port), "--threads", "1"], cpu=0)
    wait_listening(port)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(500):
        get(conn, "localhost")
    samples = []
    for _ in range(2000 if QUICK else 10000):
        started = time.perf_counter()
        get(conn, "localhost")
        samples.append((time.perf_counter() - started) * 1e6)
    stop(proc)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    print(f"p50 {p50:8.1f} µs   p99 {p99:8.1f} µs")
    sec.data.update(requests=len(samples), p50_us=p50, p99_us=p99)
    sec.table("requests", "p50", "p99")
    sec.row(f"{len(samples):,}", f"{p50:.1f} µs", f"{p99:.1f} µs")


def bench_cold_and_memory():
    apps = 100 if QUICK else 1000
    sec = Section("memory", f"RSS per idle warm instance against app count, and cold misses "
                  f"(isopod serve, 2 threads, 2 spares per thread, up to {apps:,} apps)")
    counts = sorted({c for c in (10, 50, 100, 250, 500, 1000) if c < apps} | {apps})
    kinds = [("small", "hello world (small)", None, 2.0)]
    real_path = real_world_bundle(sec)
    if real_path:
        with open(real_path) as f:
            # One source under every name: the version snapshot is made once.
            kinds.append(("real", "real ~950 KB", f.read(), 6.0))
    sec.note("Each app deployed and asked once (one warm instance each); at each count, RSS is read "
             "2.5 s after the last request (past the instances' 2 s idle shrink). RSS per idle warm instance: "
             "the process's RSS growth since before the first app, over the instances alive.", echo=False)
    sec.data["kinds"] = []
    pool_rows = []
    sec.table("app", "apps", "instances", "process RSS", "RSS per idle warm instance")
    for kind, label, source, goal in kinds:
        proc, port, admin = serve(max_instances=apps + 100)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        points, stopped = [], None

        def measure(count):
            # Past the instances' idle shrink (2 s), as idle instances are.
            time.sleep(2.5)
            rss = rss_kib(proc.pid)
            _, pool = admin.call("GET", "/admin/pool")
            instances = len(pool["instances"])
            per = (rss - base) / max(1, instances) / 1024
            points.append({"apps": count, "instances": instances, "rss_mib": rss / 1024, "per_instance_mib": per})
            print(f"{label:20} {count:5} apps  {instances:5} instances   RSS {rss / 1024:8.0f} MiB   "
                  f"per idle warm instance {per:6.2f} MiB", flush=True)
            sec.row(label, count, instances, f"{rss / 1024:,.0f} MiB", f"{per:.2f} MiB")

        for i in range(apps):
            available = meminfo_kib("MemAvailable")
            if available < MEMORY_FLOOR_KIB:
                stopped = (f"{label}: memory got tight, stopped at {i} apps of {apps} "
                           f"(MemAvailable {available / 1048576:.1f} GiB)")
                if i and (not points or points[-1]["apps"] != i):
                    measure(i)
                break
            if source is None:
                status, body = admin.call("PUT", f"/apps/app{i}", app_source(i))
            else:
                status, body = admin.call("PUT", f"/apps/app{i}", real_manifest(source), "application/json")
            assert status == 201, body
            # Spread the misses out so the spares are refilled between them, as
            # under real traffic.
            time.sleep(0.03)
            assert get(conn, f"app{i}.localhost") == 200
            if i + 1 in counts:
                measure(i + 1)
        _, pool = admin.call("GET", "/admin/pool")
        stop(proc)
        if stopped:
            sec.note(stopped)
        pool_figures = {k: pool[k] for k in ("blank_creation_p50_ms", "blank_creation_p99_ms",
                                             "cold_start_p50_ms", "cold_start_p99_ms", "evictions")}
        sec.data["kinds"].append({"kind": kind, "label": label, "base_mib": base / 1024, "target_mib": goal,
                                  "points": points, "stopped": stopped, "pool": pool_figures})
        pool_rows.append((label, pool_figures))
        print(f"{label}: blank isolate creation  p50 {pool['blank_creation_p50_ms']:.2f} ms   "
              f"p99 {pool['blank_creation_p99_ms']:.2f} ms")
        print(f"{label}: a miss inside the pool  p50 {pool['cold_start_p50_ms']:.2f} ms   "
              f"p99 {pool['cold_start_p99_ms']:.2f} ms")
        if points:
            last = points[-1]
            sec.note(f"{label} at {last['apps']} apps: " + target(
                f"RSS per idle warm instance, {label}, at {last['apps']} apps",
                last["per_instance_mib"], "<=", goal, "MiB"))
    sec.table("app", "blank isolate creation p50", "p99", "a miss inside the pool p50", "p99", "evictions")
    for label, figures in pool_rows:
        sec.row(label, f"{figures['blank_creation_p50_ms']:.2f} ms", f"{figures['blank_creation_p99_ms']:.2f} ms",
                f"{figures['cold_start_p50_ms']:.2f} ms", f"{figures['cold_start_p99_ms']:.2f} ms",
                figures["evictions"])
    sec.note("A miss inside the pool is the pool's own clock (GET /admin/pool's cold_start_*: the instance made "
             "and the app loaded), not the client's wait; the client's is in \"first request of a never-seen app\".",
             echo=False)


def bench_framework_cold_start():
    sec = Section("framework", "cold start of a framework bundle (examples/dist/hono.js), isolate-per-request")
    bundle_path = os.path.join(ROOT, "examples", "dist", "hono.js")
    if not os.path.exists(bundle_path):
        sec.note("examples/dist/hono.js is missing: run scripts/build-examples.sh")
        return
    with open(bundle_path) as f:
        source = f.read()
    print(f"bundle {len(source) / 1024:.0f} KiB")
    sec.data["bundle_kib"] = len(source) / 1024
    sec.table("instance", "p50", "p99")
    p50s = {}
    # Every request is a fresh isolate of the same version, loaded from
    # source (snapshots off, or a version snapshot would start them all):
    # with the version's code cache (made by the deploy check, then again
    # after the first request ran) or, with ISOPOD_CODE_CACHE=off, compiled.
    for cache in ("on", "off"):
        proc, port, admin = serve(max_instances=100, threads=1, spares=2,
                                  env={"ISOPOD_CODE_CACHE": cache, "ISOPOD_SNAPSHOTS": "off"})
        manifest = json.dumps({"bundle": source, "mode": "isolate-per-request"})
        status, body = admin.call("PUT", "/apps/hono", manifest, "application/json")
        assert status == 201, body
        conn = http.client.HTTPConnection("127.0.0.1", port)
        samples = []
        for _ in range(20 if QUICK else 60):
            started = time.perf_counter()
            assert get(conn, "hono.localhost", "/users/7") == 200
            samples.append((time.perf_counter() - started) * 1000)
            # Time for the thread to refill its spares and drop the last
            # isolate, so each request takes a blank one and only loads.
            time.sleep(0.1)
        stop(proc)
        p50s[cache] = percentile(samples, 0.5)
        p99 = percentile(samples, 0.99)
        label = "with the code cache   " if cache == "on" else "compiled from source  "
        print(f"{label} p50 {p50s[cache]:8.2f} ms   p99 {p99:8.2f} ms")
        sec.data[f"code_cache_{cache}"] = {"p50_ms": p50s[cache], "p99_ms": p99, "samples_ms": samples}
        sec.row(label.strip(), f"{p50s[cache]:.2f} ms", f"{p99:.2f} ms")
    sec.note(f"code cache saves {p50s['off'] - p50s['on']:.2f} ms per cold start ({p50s['off'] / p50s['on']:.2f}x)")
    sec.note(f"bundle {len(source) / 1024:.0f} KiB", echo=False)


def real_world_bundle(sec=None):
    """The path of bench/realworld's bundle, or None (saying how to build it)."""
    path = os.path.join(ROOT, "bench", "realworld", "dist", "app.js")
    if os.path.exists(path):
        return path
    text = ("bench/realworld/dist/app.js is missing: "
            "npm --prefix bench/realworld ci && npm --prefix bench/realworld run build")
    if sec is None:
        print(text)
    else:
        sec.note(text)
    return None


def bench_first_request():
    apps = 20 if QUICK else 200
    sec = Section("first_request", f"first request of a never-seen app, end to end "
                  f"(isopod serve, 2 threads, warm_on_deploy off, {apps} apps per case)")
    sec.note("What the client waits: request sent to whole response received, over loopback, for an app with no "
             "warm instance, deployed just before (each app a distinct bundle: the source plus `// app i`, so each "
             "is a new version). \"spare ready\": 2 blank isolates per thread kept ready; \"no spare\": none. "
             "RSS per idle instance: the process's RSS growth over the case, read 3 s after the last request, over "
             "its apps; it includes each version's snapshot bytes.", echo=False)
    cases = [("small", None, "on", 2), ("small", None, "on", 0)]
    real_path = real_world_bundle(sec)
    if real_path:
        with open(real_path) as f:
            real = f.read()
        cases += [("real", real, "on", 2), ("real", real, "on", 0), ("real", real, "off", 2)]
    goals = {"small": 1.0, "real": 5.0}
    sec.data["apps_per_case"] = apps
    sec.data["cases"] = []
    sec.table("app", "snapshots", "spares", "p50", "p99", "max", "RSS per idle instance", "snapshot starts",
              "target (p99)")
    for app, source, snapshots, spares in cases:
        label = f"{app}, {'spare ready' if spares else 'no spare'}" + (", snapshots off" if snapshots == "off" else "")
        proc, port, admin = serve(
            max_instances=2000, spares=spares,
            env={"ISOPOD_SNAPSHOTS": snapshots}, extra="warm_on_deploy = false\n")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        base = None
        samples = []
        for i in range(apps):
            body = app_source(i) if source is None else source + f"\n// app {i}\n"
            status, answer = admin.call("PUT", f"/apps/a{i}", real_manifest(body), "application/json")
            assert status == 201, answer
            # Let the threads refill their spares (when they keep any)
            # and drop the deploy's scratch isolates.
            time.sleep(0.15)
            if base is None:
                base = rss_kib(proc.pid)
            started = time.perf_counter()
            assert get(conn, f"a{i}.localhost") == 200
            samples.append((time.perf_counter() - started) * 1000)
        # Past the instances' idle shrink (2 s), as idle instances are.
        time.sleep(3)
        rss = rss_kib(proc.pid)
        _, pool = admin.call("GET", "/admin/pool")
        stop(proc)
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        per_instance = (rss - base) / apps / 1024
        split = {part: pool[f"first_response_{part}_p50_ms"] or 0 for part in ("wait", "isolate", "load", "handler")}
        verdict = target(f"first request of a never-seen app, p99, {label}", p99, "<", goals[app], "ms") \
            if snapshots == "on" else ""
        print(
            f"{app:5} snapshots {snapshots:3} spares {spares}: first request p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
            f"   RSS per idle instance {per_instance:6.2f} MiB"
            f"   (snapshot starts {pool['snapshot_starts']}; the pool's own split, p50: wait"
            f" {split['wait']:.2f}, isolate {split['isolate']:.2f},"
            f" load {split['load']:.2f}, handler {split['handler']:.2f} ms)"
            + (f"   {verdict}" if verdict else ""),
            flush=True,
        )
        sec.data["cases"].append({
            "label": label, "app": app, "snapshots": snapshots, "spares": spares, "apps": apps,
            "p50_ms": p50, "p99_ms": p99, "max_ms": max(samples), "samples_ms": [round(s, 4) for s in samples],
            "rss_per_idle_instance_mib": per_instance, "snapshot_starts": pool["snapshot_starts"],
            "pool_split_p50_ms": split,
        })
        sec.row(app, snapshots, spares, f"{p50:.2f} ms", f"{p99:.2f} ms", f"{max(samples):.2f} ms",
                f"{per_instance:.2f} MiB", f"{pool['snapshot_starts']} of {apps}", verdict or "(comparison)")
    sec.table("app", "snapshots", "spares", "wait", "isolate", "load", "handler")
    for case in sec.data["cases"]:
        split = case["pool_split_p50_ms"]
        sec.row(case["app"], case["snapshots"], case["spares"],
                *(f"{split[part]:.2f} ms" for part in ("wait", "isolate", "load", "handler")))
    sec.note("The second table is the pool's own split of a first response (GET /admin/pool's "
             "first_response_*_p50_ms): waiting for a thread, getting the isolate (a spare, a new one or a "
             "snapshot's restore), loading the app, running the handler.", echo=False)


def bench_first_request_peers():
    sec = Section("first_request_peers", "a process started for the real-world app, to its first response "
                  "(isopod run, deno serve, workerd)")
    real_path = real_world_bundle(sec)
    if real_path is None:
        return
    workdir = tempfile.mkdtemp(prefix="isopod-peers-")
    shutil.copy(real_path, os.path.join(workdir, "app.js"))

    def isopod_cmd(port):
        return [ISOPOD, "run", "--port", str(port), "--threads", "1", os.path.join(workdir, "app.js")]

    def deno_cmd(port):
        return [DENO, "serve", "--quiet", "--port", str(port), os.path.join(workdir, "app.js")]

    def workerd_cmd(port):
        return [WORKERD, "serve", workerd_config(workdir, os.path.join(workdir, "app.js"), port)]

    runners = [("isopod run", isopod_cmd, ISOPOD), ("deno serve", deno_cmd, DENO), ("workerd", workerd_cmd, WORKERD)]
    rounds = 5 if QUICK else 15
    results = {name: [] for name, _, _ in runners}
    # Interleaved rounds, so the machine's drift touches every runner alike.
    for _ in range(rounds):
        for name, command, binary in runners:
            if not os.path.exists(binary):
                continue
            port = free_port()
            started = time.perf_counter()
            proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            RUNNING.append(proc)
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    if get(conn, "localhost", "/") == 200:
                        break
                except OSError:
                    time.sleep(0.002)
            results[name].append((time.perf_counter() - started) * 1000)
            stop(proc)
    shutil.rmtree(workdir, ignore_errors=True)
    sec.table("runtime", "p50", "p99", "rounds")
    for name, samples in results.items():
        if samples:
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"{name:12} process start to first response  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
            sec.data[name] = {"p50_ms": p50, "p99_ms": p99, "samples_ms": samples}
            sec.row(name, f"{p50:.1f} ms", f"{p99:.1f} ms", len(samples))
        else:
            sec.note(f"{name:12} not installed (scripts/install-peers.sh)")


def bench_replicas():
    sec = Section("replicas", "a CPU-bound app (~1 ms per request) on 1 and 2 worker threads "
                  "(wrk -t2 -c16, both cores)")
    busy = "export default { fetch() { let x = 0; for (let i = 0; i < 1e6; i++) x = (x + i * 7) | 0; return new Response('busy' + (x & 0)); } };"
    results = {}
    replicas = 0
    for threads in (1, 2):
        proc, port, admin = serve(max_instances=100, threads=threads, spares=1)
        status, body = admin.call("PUT", "/apps/busy", busy)
        assert status == 201, body
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(20):
            get(conn, "busy.localhost")
        results[threads] = wrk(port, "busy.localhost", threads=2, connections=16, cpu=None)
        if threads == 2:
            _, pool = admin.call("GET", "/admin/pool")
            replicas = sum(1 for row in pool["instances"] if row["app"] == "busy" and row["replica"])
        stop(proc)
    print(f"1 thread   {results[1]:10,.0f} requests/s")
    print(f"2 threads  {results[2]:10,.0f} requests/s   ({replicas} replica(s) at the end of the run)")
    print(f"2 threads / 1 thread  {results[2] / results[1]:.2f}")
    sec.data.update(one_thread=results[1], two_threads=results[2], replicas=replicas)
    sec.table("worker threads", "requests/s", "replicas at the end")
    sec.row(1, f"{results[1]:,.0f}", "")
    sec.row(2, f"{results[2]:,.0f}", replicas)
    sec.note(f"2 threads / 1 thread: {results[2] / results[1]:.2f}", echo=False)


def bench_zipf():
    sec = Section("zipf", "hit rate, Zipf(s=1) over 1,000 apps, max_instances 200")
    proc, port, admin = serve(max_instances=200, spares=0)
    apps = 1000
    for i in range(apps):
        status, body = admin.call("PUT", f"/apps/app{i}", app_source(i))
        assert status == 201, body
    weights = [1 / (rank + 1) for rank in range(apps)]
    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    requests = 5000 if QUICK else 30000
    for app in rng.choices(range(apps), weights, k=requests):
        assert get(conn, f"app{app}.localhost") == 200
    _, pool = admin.call("GET", "/admin/pool")
    print(f"requests {requests}  hits {pool['hits']}  misses {pool['misses']}  hit rate {pool['hit_rate']:.3f}  evictions {pool['evictions']}")
    stop(proc)
    sec.data.update(requests=requests, hits=pool["hits"], misses=pool["misses"], hit_rate=pool["hit_rate"],
                    evictions=pool["evictions"])
    sec.table("requests", "hits", "misses", "hit rate", "evictions")
    sec.row(f"{requests:,}", f"{pool['hits']:,}", f"{pool['misses']:,}", f"{pool['hit_rate']:.3f}",
            f"{pool['evictions']:,}")


def bench_neighbours():
    sec = Section("neighbours", "a well-behaved app next to hostile ones (isopod serve, 2 threads)")
    proc, port, admin = serve(max_instances=200)
    admin.call("PUT", "/apps/good", app_source(0))
    hostile = {
        "spin": "export default { fetch() { for (;;) {} } };",
        "bomb": "export default { fetch() { const k = []; for (;;) k.push(new Array(100000).fill(1.5)); } };",
        "crypto": "export default { async fetch() { const key = await crypto.subtle.importKey('raw', new Uint8Array(16), 'PBKDF2', false, ['deriveBits']); for (;;) await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: new Uint8Array(16), iterations: 100000 }, key, 256); } };",
    }
    for name, source in hostile.items():
        admin.call("PUT", f"/apps/{name}", source)
    count = 1000 if QUICK else 5000

    def measure():
        # A fresh connection every 100 requests: the kernel spreads
        # connections over the worker threads (SO_REUSEPORT), and a
        # neighbour's latency depends on which thread serves its connection,
        # so one connection would sample one thread.
        samples = []
        for i in range(count):
            if i % 100 == 0:
                conn = http.client.HTTPConnection("127.0.0.1", port)
            started = time.perf_counter()
            assert get(conn, "good.localhost") == 200
            samples.append((time.perf_counter() - started) * 1e6)
        return percentile(samples, 0.5), percentile(samples, 0.99)

    warm = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(300):
        get(warm, "good.localhost")
    base_p50, base_p99 = measure()
    stop_flag = threading.Event()
    kills = {name: 0 for name in hostile}

    def attack(name):
        c = http.client.HTTPConnection("127.0.0.1", port)
        while not stop_flag.is_set():
            if get(c, f"{name}.localhost") == 503:
                kills[name] += 1

    attackers = [threading.Thread(target=attack, args=(name,)) for name in hostile]
    for t in attackers:
        t.start()
    time.sleep(0.5)
    hostile_p50, hostile_p99 = measure()
    stop_flag.set()
    for t in attackers:
        t.join()
    stop(proc)
    ratio = hostile_p99 / base_p99
    print(f"baseline           p50 {base_p50:8.1f} µs   p99 {base_p99:8.1f} µs")
    print(f"next to hostiles   p50 {hostile_p50:8.1f} µs   p99 {hostile_p99:8.1f} µs   "
          f"({kills['spin']} CPU kills, {kills['bomb']} memory kills, {kills['crypto']} crypto CPU kills meanwhile)")
    verdict = target("neighbour p99 ratio", ratio, "<=", 2.0, "x")
    print(f"neighbour p99 ratio {ratio:5.2f}x   ({verdict})")
    sec.data.update(baseline_p50_us=base_p50, baseline_p99_us=base_p99, hostile_p50_us=hostile_p50,
                    hostile_p99_us=hostile_p99, p99_ratio=ratio, kills=kills)
    sec.table("the well-behaved app", "p50", "p99")
    sec.row("alone", f"{base_p50:.1f} µs", f"{base_p99:.1f} µs")
    sec.row("next to hostiles", f"{hostile_p50:.1f} µs", f"{hostile_p99:.1f} µs")
    sec.note(f"neighbour p99 ratio {ratio:.2f}x, {verdict}; meanwhile {kills['spin']} CPU kills, "
             f"{kills['bomb']} memory kills, {kills['crypto']} crypto CPU kills", echo=False)


def bench_clock_cost():
    sec = Section("clock_cost", "the limit enforcer's CPU-clock reads per hello-world request "
                  "(isopod serve, 1 thread, wrk)")
    # Counted and timed inside isopod (GET /admin/pool): reads made while
    # wrk drives a hello-world app on one worker thread, over the requests
    # served meanwhile; the cost of one read, measured in-process.
    proc, port, admin = serve(max_instances=10, threads=1, spares=0)
    with open(HELLO) as f:
        admin.call("PUT", "/apps/hello", f.read())
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(200):
        get(conn, "hello.localhost")
    _, before = admin.call("GET", "/admin/pool")
    rps = wrk(port, host="hello.localhost")
    _, after = admin.call("GET", "/admin/pool")
    stop(proc)
    requests = (after["hits"] + after["misses"]) - (before["hits"] + before["misses"])
    reads = after["cpu_clock_reads"] - before["cpu_clock_reads"]
    per_request = reads / max(1, requests)
    read_ns = after["cpu_clock_read_ns"]
    request_ns = 1e9 / rps
    cost_ns = per_request * read_ns
    print(f"{requests:,} requests at {rps:,.0f} req/s = {request_ns / 1000:.1f} µs of the thread per request")
    print(f"CPU clock reads per request {per_request:5.2f} x {read_ns} ns = {cost_ns / 1000:.2f} µs "
          f"= {100 * cost_ns / request_ns:.1f} % of a request")
    sec.data.update(requests=requests, requests_per_s=rps, reads_per_request=per_request, read_ns=read_ns,
                    share_of_request=cost_ns / request_ns)
    sec.table("requests", "requests/s", "clock reads per request", "one read", "share of a request")
    sec.row(f"{requests:,}", f"{rps:,.0f}", f"{per_request:.2f}", f"{read_ns} ns", f"{100 * cost_ns / request_ns:.1f} %")


def start_redis():
    """A redis-server of the bench's own on a free port, or None."""
    if not shutil.which("redis-server"):
        return None, None
    port = free_port()
    directory = tempfile.mkdtemp(prefix="isopod-bench-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    RUNNING.append(proc)
    deadline = time.time() + 20
    import socket
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.02)
    return proc, None


def bench_storage():
    sec = Section("storage", "KV and D1 through the bindings (isopod serve, 1 worker thread on core 0, "
                  "wrk -t1 -c16 --latency on core 1)")
    handler = os.path.join(ROOT, "bench", "handlers", "storage.js")
    with open(handler) as f:
        source = f.read()
    redis, redis_port = start_redis()
    extra = f'redis_url = "redis://127.0.0.1:{redis_port}"\n' if redis_port else ""
    proc, port, admin = serve(max_instances=500, threads=1, spares=1, extra=extra)
    # Every thread of the server on core 0 (threads made later inherit it).
    subprocess.run(["taskset", "-apc", "0", str(proc.pid)], capture_output=True)
    backends = [("sqlite", {})] + ([("redis", {"backend": "redis"})] if redis_port else [])
    apps = {"plain": {}}
    for backend, options in backends:
        apps[f"kv-{backend}"] = {"kv": [dict({"binding": "KV", "namespace": f"bench-{backend}"}, **options)]}
    apps["d1"] = {"d1": [{"binding": "DB", "database": "bench"}]}
    for name, settings in apps.items():
        status, body = admin.call("PUT", f"/apps/{name}", json.dumps(dict(settings, bundle=source)), "application/json")
        assert status in (200, 201), body
        conn = http.client.HTTPConnection("127.0.0.1", port)
        assert get(conn, f"{name}.localhost", "/setup") == 200
    cases = [("no storage (baseline)", "plain", "/plain")]
    for backend, _ in backends:
        cases += [(f"KV read, {backend}", f"kv-{backend}", "/kv/read"),
                  (f"KV write, {backend}", f"kv-{backend}", "/kv/write")]
    cases += [("D1 point read", "d1", "/d1/read"), ("D1 single-row insert", "d1", "/d1/insert")]
    sec.table("case", "requests/s", "p50", "p99", "µs of the thread per request", "over the baseline")
    results = {}
    baseline_us = None
    for label, app, path in cases:
        measured = wrk_run(port, f"{app}.localhost", connections=16, path=path, latency=True)
        results[label] = measured
        us = 1e6 / measured["rps"]
        if baseline_us is None:
            baseline_us = us
        over = us - baseline_us
        print(f"{label:28} {measured['rps']:>9,.0f} req/s   p50 {measured['p50_ms']:6.2f} ms   p99 {measured['p99_ms']:6.2f} ms"
              f"   {us:6.1f} µs/request   +{over:5.1f} µs", flush=True)
        sec.row(label, f"{measured['rps']:,.0f}", f"{measured['p50_ms']:.2f} ms", f"{measured['p99_ms']:.2f} ms",
                f"{us:.1f}", f"+{over:.1f} µs")
    # The same KV calls spread over 100 apps, each with a namespace of its own.
    script = os.path.join(ROOT, "bench", "handlers", "hosts100.lua")
    for backend, options in backends:
        for i in range(100):
            settings = {"kv": [dict({"binding": "KV", "namespace": f"bench-{backend}-{i}"}, **options)]}
            status, body = admin.call("PUT", f"/apps/s{i}", json.dumps(dict(settings, bundle=source)), "application/json")
            assert status in (200, 201), body
            conn = http.client.HTTPConnection("127.0.0.1", port)
            assert get(conn, f"s{i}.localhost", "/setup") == 200
        for label, path in ((f"KV read, {backend}, 100 apps", "/kv/read"), (f"KV write, {backend}, 100 apps", "/kv/write")):
            measured = wrk_run(port, "s0.localhost", connections=16, script=script, path=path, latency=True)
            results[label] = measured
            us = 1e6 / measured["rps"]
            print(f"{label:28} {measured['rps']:>9,.0f} req/s   p50 {measured['p50_ms']:6.2f} ms   p99 {measured['p99_ms']:6.2f} ms",
                  flush=True)
            sec.row(label, f"{measured['rps']:,.0f}", f"{measured['p50_ms']:.2f} ms", f"{measured['p99_ms']:.2f} ms",
                    f"{us:.1f}", f"+{us - baseline_us:.1f} µs")
        for i in range(100):
            admin.call("DELETE", f"/apps/s{i}")
    stop(proc)
    if redis is not None:
        stop(redis)
    sec.data["cases"] = results
    if not redis_port:
        sec.note("redis-server is not installed: the Redis rows are missing (apt-get install redis-server)")
    # Below the binding: a bare SQLite point read against the store's calls.
    cost_bin = os.path.join(TARGET, "release", "examples", "kv_call_cost")
    if os.path.exists(cost_bin):
        below = json.loads(subprocess.run(["taskset", "-c", "0", cost_bin], capture_output=True, text=True,
                                          check=True).stdout)
        sec.data["below_the_binding"] = below
        kv_read_us = 1e6 / results["KV read, sqlite"]["rps"]
        sec.table("call", "µs per call")
        sec.row("bare SQLite point read (cached statement, same shape)", f"{below['bare_sqlite_read_us']:.2f}")
        sec.row("KvNamespace::get, SQLite backend (blocking pool, awaited)", f"{below['store_get_us']:.2f}")
        sec.row("KvNamespace::put, SQLite backend (writer thread, durable)", f"{below['store_put_us']:.2f}")
        sec.row("a KV read request over the no-storage request (the binding, the op, the store)",
                f"{kv_read_us - baseline_us:.2f}")
        sec.note(f"binding call over a bare SQLite read: {kv_read_us - baseline_us - below['bare_sqlite_read_us']:.1f} µs "
                 f"of the worker thread per call (the store's own share: "
                 f"{below['store_get_us'] - below['bare_sqlite_read_us']:.1f} µs, much of it waiting for the blocking pool)")
    else:
        sec.note("kv_call_cost is not built: cargo build --release -p isopod-store --example kv_call_cost")


def output(command):
    """A command's first line of output (stdout, else stderr), or None."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return text[0] if text else None


def machine():
    """What the figures were measured on and with."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = output(["git", "rev-parse", "HEAD"])
    dirty = output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": meminfo_kib("MemTotal") / 1048576,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": output(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "isopod_commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "isopod_binary": ISOPOD,
        "isopod_version": output([ISOPOD, "--version"]),
        "deno": output([DENO, "--version"]) if os.path.exists(DENO) else None,
        "workerd": output([WORKERD, "--version"]) if os.path.exists(WORKERD) else None,
        "wrk": output(["wrk", "-v"]),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def save_results():
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(RESULTS, f, indent=1)


# The charts scripts/bench.sh draws (bench/charts) after this run, shown
# under their sections.
CHARTS = {
    "throughput_hello": [("hello world requests/s, median of rounds", "throughput-hello.svg")],
    "throughput_realistic": [("realistic handler requests/s, median of rounds", "throughput-realistic.svg")],
    "memory": [("RSS against idle warm apps", "rss.svg")],
    "first_request": [("latency CDF of first requests", "first-request-cdf.svg")],
}


def markdown_table(columns, rows):
    def cells(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return [cells(columns), cells(["---"] * len(columns))] + [cells(row) for row in rows]


def write_benchmarks_md():
    """BENCHMARKS.md at the repository's root: the machine, the commands,
    the targets and every section's tables, with the charts."""
    meta = RESULTS["meta"]
    m = meta["machine"]
    lines = ["# isopod benchmarks", ""]
    if QUICK:
        lines += ["**This is a quick run** (`ISOPOD_BENCH_QUICK=1`: 20 apps per first-request case, 100 apps "
                  "for RSS, 2 rounds of 3 s): a check that the harness works, not figures to quote. "
                  "Run `bash scripts/bench.sh` for the full run.", ""]
    lines += [
        f"Measured {meta['date']} ({meta['minutes']:.0f} minutes) by `{meta['command']}`. "
        "`bash scripts/bench.sh` rewrites this file, `target/bench/results.json` (every figure, with the raw "
        "samples) and the charts in `docs/bench/`. "
        "Figures, not pass/fail: the machine may be shared and requests/s swing between runs, so compare "
        "figures of one run (the ratios are taken round by round for that reason). Older hand-made "
        "measurements, each with its command: [docs/performance.md](docs/performance.md).",
        "",
        "## Machine",
        "",
    ]
    lines += markdown_table(["", ""], [
        ["CPU", m["cpu"]],
        ["cores", m["cores"]],
        ["memory", f"{m['memory_gib']:.1f} GiB"],
        ["kernel", m["kernel"]],
        ["system", m["os"] or "unknown"],
        ["isopod", f"{m['isopod_version'] or 'unknown'}, commit {m['isopod_commit']}"],
        ["isopod binary", f"`{m['isopod_binary']}`"],
        ["deno", m["deno"] or "not installed"],
        ["workerd", m["workerd"] or "not installed"],
        ["wrk", m["wrk"] or "unknown"],
        ["load average at the start", " ".join(f"{load:.2f}" for load in m["load_average_at_start"])],
    ])
    quick = "ISOPOD_BENCH_QUICK=1 " if QUICK else ""
    lines += [
        "",
        "## Commands",
        "",
        "```sh",
        f"{quick}bash scripts/bench.sh",
        "```",
        "",
        "which installs wrk, deno and workerd (`scripts/install-peers.sh`), builds the bundles "
        "(`scripts/build-examples.sh`, `bench/realworld`) and runs:",
        "",
        "```sh",
        "cargo build --release -p isopod",
        "cargo build --release -p isopod-server --example bare_hyper",
        "cargo build --release -p isopod-bench-charts",
        f"{quick}python3 scripts/bench.py          # prints the figures, writes results.json and this file",
        '"$CARGO_TARGET_DIR/release/isopod-bench-charts" target/bench/results.json docs/bench',
        "```",
        "",
        "A section alone: `cd scripts && python3 -c 'import bench; bench.bench_first_request()'`. "
        "Each section below says how it loads.",
        "",
        "## Targets",
        "",
    ]
    lines += markdown_table(["figure", "measured", "verdict"], [
        [t["name"], t["measured"], t["text"]]
        for t in RESULTS["targets"]
    ])
    for key, sec in RESULTS["sections"].items():
        lines += ["", f"## {sec['title']}", ""]
        for table in sec["tables"]:
            if table["rows"]:
                lines += markdown_table(table["columns"], table["rows"]) + [""]
        for note in sec["notes"]:
            lines += [f"- {note}"]
        if sec.get("error"):
            lines += [f"- **This section failed**: `{sec['error']}`"]
        for alt, svg in CHARTS.get(key, []):
            lines += ["", f"![{alt}](docs/bench/{svg})"]
    if RESULTS["errors"]:
        lines += ["", "## Errors", ""] + [f"- `{error}`" for error in RESULTS["errors"]]
    with open(BENCHMARKS_MD, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")


SECTIONS = [
    bench_startup,
    bench_throughput,
    bench_realistic,
    bench_warm_latency,
    bench_cold_and_memory,
    bench_framework_cold_start,
    bench_first_request,
    bench_first_request_peers,
    bench_replicas,
    bench_zipf,
    bench_neighbours,
    bench_clock_cost,
    bench_storage,
]


def main():
    if not os.path.exists(ISOPOD):
        sys.exit(f"no release binary at {ISOPOD}: run scripts/bench.sh")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run scripts/bench.sh")
    started = time.monotonic()
    RESULTS["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # scripts/bench.sh says it ran this; run alone, this is the command.
        "command": ("ISOPOD_BENCH_QUICK=1 " if QUICK else "")
        + os.environ.get("ISOPOD_BENCH_COMMAND", "python3 scripts/bench.py"),
        "machine": machine(),
    }
    print(f"isopod benchmarks on {os.cpu_count()} cores ({'quick' if QUICK else 'full'} run)")
    for bench in SECTIONS:
        before = len(RESULTS["sections"])
        try:
            bench()
        except Exception as error:
            # One section's failure (a peer missing, a server that died)
            # leaves the others' figures: note it, stop what it started.
            traceback.print_exc()
            RESULTS["errors"].append(f"{bench.__name__}: {error!r}")
            if len(RESULTS["sections"]) > before:
                list(RESULTS["sections"].values())[-1]["error"] = repr(error)
            for proc in list(RUNNING):
                stop(proc)
        save_results()
    RESULTS["meta"]["minutes"] = (time.monotonic() - started) / 60
    save_results()
    write_benchmarks_md()
    print(f"\nfigures in {os.path.relpath(OUT, ROOT)}, BENCHMARKS.md written "
          f"({RESULTS['meta']['minutes']:.1f} minutes)")
    if RESULTS["errors"]:
        sys.exit(f"{len(RESULTS['errors'])} section(s) failed: " + "; ".join(RESULTS["errors"]))


if __name__ == "__main__":
    main()
