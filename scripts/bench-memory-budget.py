#!/usr/bin/env python3
"""Many real-world apps under a memory budget (issue 22's scenario).

Starts `isopod serve` with MEMORY_BUDGET_MB (default 600) and 2 worker
threads, deploys APPS (default 120) copies of bench/realworld's bundle (about
a megabyte: Hono, zod, jose, marked, preact) through the admin API, then asks
each app once from a sequential client, and once more from two concurrent
clients. Prints the statuses, the peak resident memory (VmHWM) against the
budget, and the pool's evictions and teardowns. Figures, not a verdict.

usage: scripts/bench-memory-budget.py ISOPOD_BINARY [APPS] [MEMORY_BUDGET_MB]
(build the bundle first: npm --prefix bench/realworld ci && npm --prefix
bench/realworld run build)
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-admin-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, host, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1]
    apps = int(sys.argv[2]) if len(sys.argv) > 2 else 120
    budget_mb = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    bundle = open(os.path.join(ROOT, "bench/realworld/dist/app.js"), "rb").read()
    port, admin = free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="isopod-membench-")
    config = os.path.join(workdir, "isopod.toml")
    with open(config, "w") as f:
        f.write(
            f'listen = "127.0.0.1:{port}"\nthreads = 2\nmemory_budget_mb = {budget_mb}\n'
            f'admin_listen = "127.0.0.1:{admin}"\nadmin_token = "{TOKEN}"\n'
        )
    server = subprocess.Popen(
        [binary, "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(workdir, "isopod.log"), "w"),
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", admin), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        deploy_started = time.monotonic()
        for app in range(apps):
            status, body = request(admin, "PUT", f"/apps/app{app}", "admin", bundle, auth)
            if status not in (200, 201):
                raise SystemExit(f"deploy app{app}: {status} {body[:200]!r}")
        deploy_s = time.monotonic() - deploy_started
        pid = server.pid

        def one_pass(order, statuses):
            for app in order:
                status, _ = request(port, "GET", "/", f"app{app}.localhost")
                statuses[status] += 1

        sequential = Counter()
        started = time.monotonic()
        one_pass(range(apps), sequential)
        sequential_s = time.monotonic() - started
        concurrent = Counter()
        clients = [
            threading.Thread(target=one_pass, args=(order, concurrent))
            for order in (range(apps), range(apps - 1, -1, -1))
        ]
        started = time.monotonic()
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        concurrent_s = time.monotonic() - started
        peak = status_kib(pid, "VmHWM:") / 1024
        rss = status_kib(pid, "VmRSS:") / 1024
        _, pool = request(admin, "GET", "/admin/pool", "admin", None, auth)
        pool = json.loads(pool)
        print(f"binary: {binary}")
        print(f"{apps} apps of {len(bundle) / 1024:.0f} KiB deployed in {deploy_s:.1f} s; budget {budget_mb} MiB, 2 threads")
        print(f"sequential client: {dict(sequential)} in {sequential_s:.1f} s")
        print(f"two concurrent clients: {dict(concurrent)} in {concurrent_s:.1f} s")
        print(f"peak RSS {peak:.0f} MiB = {peak / budget_mb:.2f} x budget; RSS now {rss:.0f} MiB")
        print(
            "pool: cached {} evictions {} teardowns {} tearing_down {}".format(
                pool.get("cached"), pool.get("evictions"), pool.get("teardowns"), pool.get("tearing_down")
            )
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
