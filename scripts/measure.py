#!/usr/bin/env python3
"""Startup and memory figures for `isopod run` (release build).

Prints: the time from process start to the first 200 response, the process's
RSS after it has served N requests (default 1000) on keep-alive connections,
and the snapshot size the binary reports. Usage:

    scripts/isopod --version >/dev/null   # builds the release binary
    python3 scripts/measure.py [BUNDLE] [N]
"""
import http.client
import json
import os
import subprocess
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/isopod/target"))
binary = os.environ.get("ISOPOD_BIN", os.path.join(target, "release", "isopod"))
bundle = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "examples", "hello.js")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
port = 18700


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


started = time.monotonic()
proc = subprocess.Popen(
    [binary, "run", bundle, "--port", str(port)],
    stderr=subprocess.PIPE,
    text=True,
)
first = None
while first is None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        if conn.getresponse().status == 200:
            first = time.monotonic() - started
    except OSError:
        time.sleep(0.001)
listening = json.loads(proc.stderr.readline())

rss_first = rss_kib(proc.pid)
conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(8)]
for i in range(count):
    conn = conns[i % len(conns)]
    conn.request("GET", f"/req/{i}")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
rss_after = rss_kib(proc.pid)
proc.terminate()
proc.wait()

print(f"bundle:                   {os.path.relpath(bundle, root)}")
print(f"start to first response:  {first * 1000:.1f} ms")
print(f"server's own startup:     {listening['startup_ms']:.1f} ms ({listening['threads']} threads)")
print(f"RSS after first response: {rss_first / 1024:.1f} MiB")
print(f"RSS after {count} requests: {rss_after / 1024:.1f} MiB")
print(f"snapshot:                 {listening['snapshot_bytes'] / 1e6:.2f} MB")
