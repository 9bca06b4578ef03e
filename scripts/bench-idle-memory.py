#!/usr/bin/env python3
"""RSS per idle instance and the next request after idling, one app at a time.

For each CASE (`KIND|V8_FLAGS[|ENV=VALUE...]`, KIND `small` or `real`):
starts `isopod serve` (2 threads, no spares, warm_on_deploy off), deploys N
apps (N env, default 60) with snapshots off, sends each its first request
(timed: "first"), waits past the idle shrink (2 s), reads the process's RSS
growth per app, then times one more request to each ("next-after-idle").
`real` is bench/realworld's bundle, or the file REAL names; BIN names the
binary (default: the release build).

Usage: N=30 python3 scripts/bench-idle-memory.py "real|" "real|--no-flush-bytecode"
"""
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def timed_get(conn, host):
    started = time.perf_counter()
    assert bench.get(conn, host) == 200
    return (time.perf_counter() - started) * 1000


def main():
    real = open(os.environ.get("REAL") or bench.real_world_bundle()).read()
    bench.ISOPOD = os.environ.get("BIN", bench.ISOPOD)
    apps = int(os.environ.get("N", "60"))
    for case in sys.argv[1:]:
        kind, flags, *extra_env = case.split("|")
        env = {"ISOPOD_V8_FLAGS": flags}
        env.update(pair.split("=", 1) for pair in extra_env)
        proc, port, admin = bench.serve(max_instances=2000, threads=2, spares=0, env=env,
                                        extra="warm_on_deploy = false\n")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        base = None
        first = []
        for i in range(apps):
            source = bench.app_source(i) if kind == "small" else real
            manifest = json.dumps({"bundle": source, "snapshot": "off"})
            status, body = admin.call("PUT", f"/apps/a{i}", manifest, "application/json")
            assert status == 201, body
            if base is None:
                # The deploy check's scratch isolate gone, the threads idle.
                time.sleep(0.5)
                base = bench.rss_kib(proc.pid)
            first.append(timed_get(conn, f"a{i}.localhost"))
        # Past the instances' idle shrink (2 s).
        time.sleep(3.5)
        rss = bench.rss_kib(proc.pid)
        after_idle = [timed_get(conn, f"a{i}.localhost") for i in range(apps)]
        bench.stop(proc)
        print(f"{kind:5} {flags:30} RSS per idle instance {(rss - base) / apps / 1024:6.2f} MiB"
              f"   first p50 {bench.percentile(first, 0.5):6.2f} ms"
              f"   next after idle p50 {bench.percentile(after_idle, 0.5):6.3f}"
              f" p90 {bench.percentile(after_idle, 0.9):6.3f} ms", flush=True)


if __name__ == "__main__":
    main()
