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
    the p99 ratio (target <= 2x);
  - the limit enforcer's CPU-clock reads per hello-world request and their
    cost next to the request's own (counted and timed inside isopod).

Usage: scripts/bench.sh (builds the release binaries and the bundles,
installs wrk, deno and workerd). ISOPOD_BENCH_QUICK=1 for a short run (20
apps per first-request case, 100 apps for RSS, 2 rounds of 3 s).
"""
import http.client
import json
import os
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
# Below this much available memory the RSS section stops adding apps.
MEMORY_FLOOR_KIB = 1536 * 1024

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
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # `serve`'s directory (registry, snapshots): hundreds of MB after the
    # first-request section.
    if getattr(proc, "bench_dir", None):
        shutil.rmtree(proc.bench_dir, ignore_errors=True)


def wrk_run(port, host="localhost", threads=1, connections=32, cpu="1", duration=None, script=None):
    """wrk's requests/s and its count of non-2xx/3xx answers; the client
    pinned to `cpu` (None: any core), `script` a wrk Lua file."""
    pin = [] if cpu is None else ["taskset", "-c", cpu]
    extra = [] if script is None else ["-s", script]
    out = subprocess.run(
        pin + ["wrk", f"-t{threads}", f"-c{connections}", "-d" + (duration or DURATION), "-H", f"Host: {host}"]
        + extra + [f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
    }


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


def section(title):
    print(f"\n## {title}", flush=True)


def bench_startup():
    section("isopod run: startup and memory (examples/hello.js, 2 threads)")
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [ISOPOD, "run", HELLO, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
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


def throughput_rounds(bundle, script=None, hyper=False):
    """Requests/s of `bundle` on isopod (one worker thread), deno serve,
    workerd and (with `hyper`) bare hyper, all started at once, each pinned
    to core 0 and loaded in turn by wrk pinned to core 1: a warm-up round
    (discarded), then ROUNDS rounds. Prints each runtime's median and the
    per-round ratios of isopod to the others, and returns them."""
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
            print(f"{name}: not measured, {binary} is missing (scripts/install-peers.sh, scripts/bench.sh)")
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
    print(f"{ROUNDS} rounds after a {WARMUP[:-1]} s warm-up round (discarded) of `{load}` against each server")
    summary = []
    for name, values in rounds.items():
        row = {"runtime": name, "median": statistics.median(values), "min": min(values), "max": max(values),
               "rounds": values, "warmup": warmup[name], "non_2xx": non_2xx[name]}
        summary.append(row)
        print(f"{name:12} median {row['median']:10,.0f} requests/s   rounds "
              + " ".join(f"{v:,.0f}" for v in values) + f"   (warm-up {warmup[name]:,.0f})")
        if non_2xx[name]:
            print(f"{name}: {non_2xx[name]} answers were not 2xx/3xx: its figure is not comparable")
    ratios = []
    if "isopod" in rounds:
        for other in ("deno serve", "workerd", "bare hyper"):
            if other not in rounds:
                continue
            per_round = [i / o for i, o in zip(rounds["isopod"], rounds[other])]
            ratio = {"name": f"isopod/{other}", "median": statistics.median(per_round), "min": min(per_round),
                     "max": max(per_round), "per_round": per_round}
            ratios.append(ratio)
            print(f"{ratio['name']:22} {ratio['median']:5.2f}   (per-round min {ratio['min']:.2f}, max {ratio['max']:.2f})")
    return {row["runtime"]: row["median"] for row in summary}, {r["name"]: r for r in ratios}


def bench_throughput():
    section("hello world, requests/s on one core, interleaved rounds "
            "(wrk -t1 -c32 on core 1, each server on core 0)")
    medians, ratios = throughput_rounds(HELLO, hyper=True)
    isopod, deno, hyper = medians.get("isopod"), medians.get("deno serve"), medians.get("bare hyper")
    if isopod and hyper:
        # What a request costs isopod's thread beyond hyper's own HTTP work:
        # the JavaScript call, the pool, the windows (core 0 saturated).
        overhead = 1e6 / isopod - 1e6 / hyper
        print(f"dispatch overhead, 1 core: {overhead:.1f} µs per request "
              f"(isopod {1e6 / isopod:.1f} µs, hyper {1e6 / hyper:.1f} µs, from the medians)")
        if deno:
            print(f"deno, same measure: {1e6 / deno - 1e6 / hyper:.1f} µs per request")
    # isopod on two worker threads, both cores (wrk shares core 1), once.
    port = free_port()
    proc = start(["taskset", "-c", "0,1", ISOPOD, "run", HELLO, "--port", str(port), "--threads", "2"])
    wait_listening(port)
    two = wrk(port)
    stop(proc)
    line = f"isopod 2 threads (cores 0,1, wrk on core 1): {two:,.0f} requests/s"
    if isopod:
        line += f", {two / isopod:.2f}x the 1-thread median"
    print(line)


def bench_realistic():
    section("a realistic handler (bench/handlers/realistic.js, POST /api/orders), "
            "requests/s on one core, interleaved rounds (wrk -t1 -c32 on core 1, each server on core 0)")
    throughput_rounds(REALISTIC, script=REALISTIC_LUA)


def bench_warm_latency():
    section("warm dispatch, sequential keep-alive requests (client-observed)")
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


def bench_cold_and_memory():
    apps = 100 if QUICK else 1000
    section(f"RSS per idle warm instance against app count, and cold misses "
            f"(isopod serve, 2 threads, 2 spares per thread, up to {apps:,} apps)")
    counts = sorted({c for c in (10, 50, 100, 250, 500, 1000) if c < apps} | {apps})
    kinds = [("hello world (small)", None)]
    real_path = real_world_bundle()
    if real_path:
        with open(real_path) as f:
            # One source under every name: the version snapshot is made once.
            kinds.append(("real ~950 KB", f.read()))
    for label, source in kinds:
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
            print(stopped)
        print(f"{label}: blank isolate creation  p50 {pool['blank_creation_p50_ms']:.2f} ms   "
              f"p99 {pool['blank_creation_p99_ms']:.2f} ms")
        print(f"{label}: a miss inside the pool  p50 {pool['cold_start_p50_ms']:.2f} ms   "
              f"p99 {pool['cold_start_p99_ms']:.2f} ms")


def bench_framework_cold_start():
    section("cold start of a framework bundle (examples/dist/hono.js), isolate-per-request")
    bundle_path = os.path.join(ROOT, "examples", "dist", "hono.js")
    if not os.path.exists(bundle_path):
        print("examples/dist/hono.js is missing: run scripts/build-examples.sh")
        return
    with open(bundle_path) as f:
        source = f.read()
    print(f"bundle {len(source) / 1024:.0f} KiB")
    p50s = {}
    # Every request is a fresh isolate of the same version, which starts from
    # the version's code cache (made by the deploy check) or, with
    # ISOPOD_CODE_CACHE=off, compiles the bundle from source.
    for cache in ("on", "off"):
        proc, port, admin = serve(max_instances=100, threads=1, spares=2, env={"ISOPOD_CODE_CACHE": cache})
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
    print(f"code cache saves {p50s['off'] - p50s['on']:.2f} ms per cold start ({p50s['off'] / p50s['on']:.2f}x)")


def real_world_bundle():
    """The path of bench/realworld's bundle, or None (saying how to build it)."""
    path = os.path.join(ROOT, "bench", "realworld", "dist", "app.js")
    if os.path.exists(path):
        return path
    print("bench/realworld/dist/app.js is missing: npm --prefix bench/realworld ci && npm --prefix bench/realworld run build")
    return None


def bench_first_request():
    apps = 20 if QUICK else 200
    section(f"first request of a never-seen app, end to end "
            f"(isopod serve, 2 threads, warm_on_deploy off, {apps} apps per case)")
    cases = [("small", None, "on", 2), ("small", None, "on", 0)]
    real_path = real_world_bundle()
    if real_path:
        with open(real_path) as f:
            real = f.read()
        cases += [("real", real, "on", 2), ("real", real, "on", 0), ("real", real, "off", 2)]
    for app, source, snapshots, spares in cases:
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
        print(
            f"{app:5} snapshots {snapshots:3} spares {spares}: first request p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
            f"   RSS per idle instance {per_instance:6.2f} MiB"
            f"   (snapshot starts {pool['snapshot_starts']}; the pool's own split, p50: wait"
            f" {split['wait']:.2f}, isolate {split['isolate']:.2f},"
            f" load {split['load']:.2f}, handler {split['handler']:.2f} ms)",
            flush=True,
        )


def bench_first_request_peers():
    section("a process started for the real-world app, to its first response "
            "(isopod run, deno serve, workerd)")
    real_path = real_world_bundle()
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
    for name, samples in results.items():
        if samples:
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"{name:12} process start to first response  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
        else:
            print(f"{name:12} not installed (scripts/install-peers.sh)")


def bench_replicas():
    section("a CPU-bound app (~1 ms per request) on 1 and 2 worker threads "
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


def bench_zipf():
    section("hit rate, Zipf(s=1) over 1,000 apps, max_instances 200")
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


def bench_neighbours():
    section("a well-behaved app next to hostile ones (isopod serve, 2 threads)")
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
    print(f"neighbour p99 ratio {ratio:5.2f}x   (target <= 2x)")


def bench_clock_cost():
    section("the limit enforcer's CPU-clock reads per hello-world request "
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


def main():
    if not os.path.exists(ISOPOD):
        sys.exit(f"no release binary at {ISOPOD}: run scripts/bench.sh")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run scripts/bench.sh")
    print(f"isopod benchmarks on {os.cpu_count()} cores ({'quick' if QUICK else 'full'} run)")
    bench_startup()
    bench_throughput()
    bench_realistic()
    bench_warm_latency()
    bench_cold_and_memory()
    bench_framework_cold_start()
    bench_first_request()
    bench_first_request_peers()
    bench_replicas()
    bench_zipf()
    bench_neighbours()
    bench_clock_cost()


if __name__ == "__main__":
    main()
