#!/usr/bin/env python3
"""What a version's code cache saves an instance loaded from source.

Serves the real-world bundle (bench/realworld) in isolate-per-request mode
with version snapshots off, so every request is a new isolate that loads
the bundle from source with the version's code cache, and prints the
client's time per request (p50/p90 after 5 warm-up requests) and the
version's `code_cache` as `GET /apps/NAME` shows it.

Usage: python3 scripts/bench-code-cache.py BINARY:CACHE [BINARY:CACHE ...]
where CACHE is `on` or `off` (ISOPOD_CODE_CACHE); give two binaries,
interleaved, to compare builds. Build the bundle first with
`npm --prefix bench/realworld ci && npm --prefix bench/realworld run build`.
"""
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    path = bench.real_world_bundle()
    if path is None or len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(path) as f:
        source = f.read()
    manifest = json.dumps({"bundle": source, "mode": "isolate-per-request"})
    for label in sys.argv[1:]:
        binary, cache = label.rsplit(":", 1)
        bench.ISOPOD = binary
        proc, port, admin = bench.serve(
            max_instances=100, threads=1, spares=2,
            env={"ISOPOD_CODE_CACHE": cache, "ISOPOD_SNAPSHOTS": "off"})
        status, body = admin.call("PUT", "/apps/real", manifest, "application/json")
        assert status == 201, body
        conn = http.client.HTTPConnection("127.0.0.1", port)
        samples = []
        for _ in range(45):
            started = time.perf_counter()
            assert bench.get(conn, "real.localhost", "/") == 200
            samples.append((time.perf_counter() - started) * 1000)
            # Time for the thread to refill its spares and drop the last
            # isolate, so each request takes a blank one and only loads.
            time.sleep(0.15)
        _, app = admin.call("GET", "/apps/real")
        bench.stop(proc)
        samples = samples[5:]
        print(f"{label:40} p50 {bench.percentile(samples, 0.5):7.2f} ms   p90 "
              f"{bench.percentile(samples, 0.9):7.2f} ms   code_cache {json.dumps(app.get('code_cache'))}",
              flush=True)


if __name__ == "__main__":
    main()
