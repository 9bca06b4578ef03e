#!/usr/bin/env python3
"""Run web-platform-tests `.any.js` files on isopod, deno and workerd.

Every test file becomes one ES-module bundle whose default export's `fetch`
loads testharness.js, the file's META scripts and the file itself, waits for
the harness to complete and answers the subtest results as JSON. The same
bundle is served by each runtime (a fresh process per file and runtime) and
requested once. See README.md next to this script.

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_DIRS = [
    "WebCryptoAPI",
    "url",
    "encoding",
    "fetch/api",
    "streams",
    "FileAPI/blob",
    "dom/events",
    "dom/abort",
    "html/webappapis",
]
RUNTIMES = ["isopod", "deno", "workerd"]
HOME = Path(os.environ.get("HOME", "/root"))
PEERS = HOME / ".cache/isopod-peers"
DEFAULT_BIN = {
    "isopod": os.environ.get("ISOPOD_BIN", str(HOME / ".cache/isopod/target/debug/isopod")),
    "deno": os.environ.get("DENO_BIN", str(PEERS / "deno/package/deno")),
    "workerd": os.environ.get("WORKERD_BIN", str(PEERS / "workerd/package/bin/workerd")),
}
WORKER_SCOPES = {
    "worker",
    "dedicatedworker",
    "sharedworker",
    "serviceworker",
    "dedicatedworker-module",
    "sharedworker-module",
    "serviceworker-module",
    "jsshell",
}
TEST_STATUS = ["PASS", "FAIL", "TIMEOUT", "NOTRUN", "PRECONDITION_FAILED"]
HARNESS_STATUS = ["OK", "ERROR", "TIMEOUT", "PRECONDITION_FAILED"]
WORKERD_COMPAT_DATE = "2025-09-01"  # the date crates/isopod/tests/it/probe.rs uses


# --------------------------------------------------------------------------
# Test discovery and META parsing


def parse_meta(text: str) -> dict[str, list[str]]:
    """The leading `// META: key=value` lines of a test file."""
    meta: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"//\s*META:\s*(\w+)=(.*)$", line)
        if not m:
            if line.startswith("//"):
                continue
            break
        meta.setdefault(m.group(1), []).append(m.group(2).strip())
    return meta


def runs_in_workers(meta: dict[str, list[str]]) -> bool:
    scopes: set[str] = set()
    for value in meta.get("global", ["window,dedicatedworker"]):
        for item in value.split(","):
            item = item.strip()
            if item.startswith("!"):
                scopes.discard(item[1:])
            elif item:
                scopes.add(item)
    return bool(scopes & WORKER_SCOPES)


def discover(wpt: Path, dirs: list[str], only: list[str]) -> list[tuple[str, str]]:
    """(relative path, skip reason or "") for every .any.js file under dirs."""
    found = []
    for d in dirs:
        for path in sorted((wpt / d).rglob("*.any.js")):
            rel = path.relative_to(wpt).as_posix()
            if only and not any(o in rel for o in only):
                continue
            if "/resources/" in rel or "/support/" in rel:
                continue
            meta = parse_meta(path.read_text(encoding="utf-8", errors="replace"))
            found.append((rel, "" if runs_in_workers(meta) else "not for workers"))
    return found


# --------------------------------------------------------------------------
# Bundles


class Env:
    """What a bundle may know of the world around it: the resource server."""

    def __init__(self, wpt: Path, resource_port: int):
        self.wpt = wpt
        # "localhost" as wptserve's host: get-host-info.sub.js then names
        # 127.0.0.1 as the "remote" host (both reach the resource server).
        self.host = "localhost"
        self.port = resource_port

    def substitute(self, text: str) -> str:
        """The few wptserve `.sub` substitutions helper scripts use."""
        port = self.port

        def one(m: re.Match) -> str:
            key = m.group(1).strip()
            if key == "host":
                return self.host
            if key == "ports[http][0]":
                return str(port)
            if key == "ports[http][1]":
                return str(port + 1)
            if key == "ports[https][0]":
                return str(port + 2)
            if key == "ports[https][1]":
                return str(port + 3)
            if key in ("ports[ws][0]", "ports[wss][0]"):
                return str(port + 4)
            dm = re.match(r"(?:domains|hosts\[alt\])\[(.*)\]$", key)
            if dm:
                sub = dm.group(1)
                return f"{sub}.not-{self.host}" if sub else f"not-{self.host}"
            return ""

        return re.sub(r"\{\{([^}]*)\}\}", one, text)

    def read_script(self, rel: str) -> str:
        text = (self.wpt / rel).read_text(encoding="utf-8", errors="replace")
        if ".sub." in rel:
            text = self.substitute(text)
        return text


# wptserve's rewrites (tools/serve/serve.py).
REWRITES = {"resources/WebIDLParser.js": "resources/webidl2/lib/webidl2.js"}


def resolve_script(test_rel: str, src: str) -> str:
    src = src.split("?")[0].split("#")[0]
    if src.startswith("/"):
        rel = os.path.normpath(src.lstrip("/"))
    else:
        rel = os.path.normpath(os.path.join(os.path.dirname(test_rel), src))
    return REWRITES.get(rel, rel)


PRELUDE = r"""
const __wptConfig = __WPT_CONFIG__;

function __wptSleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function __wptString(value) {
  try {
    return value === undefined || value === null ? "" : String(value);
  } catch (e) {
    return "<unprintable>";
  }
}

// The worker's location, as the WPT server would give it.
function __wptInstallGlobals() {
  const url = new URL(__wptConfig.location);
  const location = {
    href: url.href, origin: url.origin, protocol: url.protocol, host: url.host,
    hostname: url.hostname, port: url.port, pathname: url.pathname,
    search: url.search, hash: url.hash,
    toString() { return url.href; },
  };
  try {
    Object.defineProperty(globalThis, "location", {
      value: location, writable: true, configurable: true, enumerable: true,
    });
  } catch (e) {
    try { globalThis.location = location; } catch (e2) {}
  }
  globalThis.GLOBAL = {
    isWindow: () => false,
    isWorker: () => true,
    isShadowRealm: () => false,
  };
  if (__wptConfig.title) globalThis.META_TITLE = __wptConfig.title;
  for (const name of __wptConfig.implicitGlobals) {
    if (!(name in globalThis)) globalThis[name] = undefined;
  }
  // Relative URLs given to fetch() resolve against the location, as in a worker.
  const nativeFetch = globalThis.fetch;
  if (typeof nativeFetch === "function") {
    const fetch = function fetch(input, init = undefined) {
      if (typeof input === "string") {
        let absolute = true;
        try { new URL(input); } catch (e) { absolute = false; }
        if (!absolute) {
          try { input = new URL(input, url.href).href; } catch (e) {}
        }
      }
      return arguments.length < 2
        ? nativeFetch.call(globalThis, input)
        : nativeFetch.call(globalThis, input, init);
    };
    globalThis.fetch = fetch;
  }
}

async function __wptMain() {
  const started = new Map();
  const reported = [];
  let final = null;
  let harness = null;
  let resolveDone;
  const completed = new Promise((resolve) => { resolveDone = resolve; });
  const events = [];
  const record = (test) => ({
    name: __wptString(test.name),
    status: __WPT_TEST_STATUS__[test.status] ?? __wptString(test.status),
    message: __wptString(test.message).slice(0, 1000),
  });
  const hooks = {
    attach() {
      add_test_state_callback((test) => { started.set(test, true); });
      add_result_callback((test) => { reported.push(record(test)); });
      add_completion_callback((tests, status) => {
        final = tests.map(record);
        harness = {
          status: __WPT_HARNESS_STATUS__[status.status] ?? __wptString(status.status),
          message: __wptString(status.message).slice(0, 1000),
        };
        resolveDone();
      });
    },
  };
  const onRejection = (event) => {
    events.push("unhandledrejection: " + __wptString(event.reason && (event.reason.stack || event.reason)).slice(0, 300));
    try { event.preventDefault(); } catch (e) {}
  };
  const onError = (event) => {
    events.push("error: " + __wptString(event.message || event.error).slice(0, 300));
    try { event.preventDefault(); } catch (e) {}
  };
  try {
    if (typeof addEventListener === "function") {
      addEventListener("unhandledrejection", onRejection);
      addEventListener("error", onError);
    }
  } catch (e) {}
  __wptInstallGlobals();
  let loadError = null;
  try {
    __wptScripts.call(globalThis, hooks);
  } catch (e) {
    loadError = __wptString(e && (e.stack || e)).slice(0, 1000);
    try { if (typeof done === "function") done(); } catch (e2) {}
  }
  const timer = __wptSleep(__wptConfig.timeoutMs).then(() => "timeout");
  let outcome = await Promise.race([completed.then(() => "done"), timer]);
  if (outcome === "timeout") {
    // Let the harness time out the way it would in a browser.
    try { if (typeof timeout === "function") timeout(); } catch (e) {}
    outcome = await Promise.race([completed.then(() => "done"), __wptSleep(3000).then(() => "stuck")]);
  }
  let tests = final;
  if (tests === null) {
    tests = reported.slice();
    const seen = new Set(tests.map((t) => t.name));
    for (const test of started.keys()) {
      const name = __wptString(test.name);
      if (!seen.has(name)) {
        seen.add(name);
        tests.push({ name, status: "TIMEOUT", message: "runner timeout" });
      }
    }
    harness = { status: "TIMEOUT", message: "runner timeout (" + outcome + ")" };
  }
  return {
    file: __wptConfig.file,
    userAgent: typeof navigator === "object" ? __wptString(navigator.userAgent) : "",
    harness,
    loadError,
    events: events.slice(0, 20),
    tests,
  };
}

export default {
  async fetch(request) {
    let body;
    try {
      body = await __wptMain();
    } catch (e) {
      body = { file: __wptConfig.file, loadError: __wptString(e && (e.stack || e)), tests: [] };
    }
    return new Response(JSON.stringify(body), {
      headers: { "content-type": "application/json" },
    });
  },
};
"""


JS_WORDS = set("""
break case catch class const continue debugger default delete do else export extends
false finally for function if import in instanceof new null return super switch this
throw true try typeof var void while with yield let static enum await implements
package protected interface private public async of get set undefined NaN Infinity
eval arguments
""".split())


def implicit_globals(source: str) -> list[str]:
    """Names the scripts assign to as plain identifiers.

    Classic scripts are sloppy: `x = 1` without a declaration makes a global.
    The bundle is a module (strict), so such names are made global properties
    beforehand (only where the global scope lacks them). Names that turn out
    to be declared locally just shadow the harmless global.
    """
    names = set()
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    source = re.sub(r"(?m)^\s*//.*$", " ", source)
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_$][\w$]*)\s*(?:=(?![=>])|[-+*/%|&^]=|\+\+|--)", source):
        names.add(m.group(1))
    for m in re.finditer(r"(?:\+\+|--)\s*([A-Za-z_$][\w$]*)", source):
        names.add(m.group(1))
    for m in re.finditer(r"\bfor\s*\(\s*([A-Za-z_$][\w$]*)\s+(?:of|in)\b", source):
        names.add(m.group(1))
    return sorted(n for n in names if n not in JS_WORDS and not n.startswith("__wpt"))


def prelude_for(config: dict) -> str:
    return (
        PRELUDE.replace("__WPT_CONFIG__", json.dumps(config))
        .replace("__WPT_TEST_STATUS__", json.dumps(TEST_STATUS))
        .replace("__WPT_HARNESS_STATUS__", json.dumps(HARNESS_STATUS))
    )


def build_bundle(env: Env, test_rel: str, timeout_ms: int) -> str:
    text = (env.wpt / test_rel).read_text(encoding="utf-8", errors="replace")
    meta = parse_meta(text)
    worker_path = re.sub(r"\.any\.js$", ".any.worker.js", test_rel)
    config = {
        "file": test_rel,
        "title": (meta.get("title") or [""])[0],
        "timeoutMs": timeout_ms,
        "location": f"http://{env.host}:{env.port}/{worker_path}",
    }
    parts = [f"// WPT bundle for {test_rel}, generated by isopod's scripts/wpt/run.py", ""]
    parts.append("function __wptScripts(__wptHooks) {")
    # testharness.js sees a plain shell global scope on every runtime: the
    # worker-scope classes it tests with instanceof are shadowed here.
    parts.append(
        "{\nconst DedicatedWorkerGlobalScope = class {}, SharedWorkerGlobalScope = class {},\n"
        "  ServiceWorkerGlobalScope = class {}, WorkerGlobalScope = class {};"
    )
    parts.append("// ---- /resources/testharness.js")
    parts.append(env.read_script("resources/testharness.js"))
    # As in a dedicated worker, the harness completes only after the done()
    # that follows the test file.
    parts.append("}\n__wptHooks.attach();\nsetup({ explicit_done: true });")
    for src in meta.get("script", []):
        rel = resolve_script(test_rel, src)
        parts.append(f"// ---- /{rel}")
        parts.append(env.read_script(rel))
    parts.append(f"// ---- /{test_rel}")
    parts.append(text)
    parts.append("// ---- end of test file\ndone();\n}")
    scripts = "\n".join(parts[6:])  # the META scripts and the test file
    config["implicitGlobals"] = implicit_globals(scripts)
    # A classic script's top-level functions are properties of the global
    # object (idlharness.js calls globalThis.fetch_spec); here they are
    # hoisted locals of one function, so they are copied over first.
    functions = sorted(set(re.findall(r"(?m)^(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)", scripts)))
    parts[6] += "\n" + "".join(
        f'if (typeof {n} === "function") globalThis.{n} = {n};\n'
        for n in functions if not n.startswith("__wpt"))
    parts[1] = prelude_for(config)
    return "\n".join(parts) + "\n"


def file_timeout_ms(env: Env, test_rel: str, base_ms: int) -> int:
    meta = parse_meta((env.wpt / test_rel).read_text(encoding="utf-8", errors="replace"))
    return base_ms * 2 if "long" in meta.get("timeout", []) else base_ms


# --------------------------------------------------------------------------
# Resource server: static files from the WPT checkout, for tests that fetch
# their data (url/resources/*.json, ...).


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass

    def translate_path(self, path):
        clean = path.split("?")[0].split("#")[0].lstrip("/")
        if clean in REWRITES:
            path = "/" + REWRITES[clean]
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()


def start_resource_server(wpt: Path, port: int) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(wpt))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------
# Runtimes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workerd_config(port: int) -> str:
    return f"""using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .wpt),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);
const wpt :Workerd.Worker = (
  modules = [ (name = "bundle.js", esModule = embed "bundle.js") ],
  compatibilityDate = "{WORKERD_COMPAT_DATE}",
  globalOutbound = "internet",
);
"""


def command(runtime: str, args, bundle: Path, port: int, workdir: Path) -> list[str]:
    binary = getattr(args, f"{runtime}_bin")
    if runtime == "isopod":
        cmd = [binary, "run", str(bundle), "--port", str(port), "--host", "127.0.0.1"]
        for limit in args.isopod_limit:
            cmd += ["--limit", limit]
        cmd += ["--allow-net", f"localhost:{args.resource_port},127.0.0.1:{args.resource_port}"]
        return cmd
    if runtime == "deno":
        return [binary, "serve", "--quiet", "--host", "127.0.0.1", "--port", str(port),
                "--allow-all", "--no-prompt", str(bundle)]
    if runtime == "workerd":
        (workdir / "config.capnp").write_text(workerd_config(port))
        return [binary, "serve", str(workdir / "config.capnp")]
    raise ValueError(runtime)


def wait_listening(port: int, proc: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before listening"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return ""
        except OSError:
            time.sleep(0.05)
    return "did not listen in time"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # The answer is in: no graceful shutdown needed (deno serve takes seconds).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


def tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


LIVE: set[subprocess.Popen] = set()
LIVE_LOCK = threading.Lock()


def stop_all(signum=None, frame=None) -> None:
    """Kill the runtime processes this runner started, then exit."""
    with LIVE_LOCK:
        procs = list(LIVE)
    for proc in procs:
        stop(proc)
    if signum is not None:
        os._exit(128 + signum)


def run_one(runtime: str, test_rel: str, args, env: Env) -> dict:
    timeout_ms = file_timeout_ms(env, test_rel, args.timeout * 1000)
    bundle_text = build_bundle(env, test_rel, timeout_ms)
    safe = test_rel.replace("/", "__")
    log_dir = args.out / "logs" / runtime
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / (safe + ".log")
    started = time.monotonic()
    result: dict = {"file": test_rel, "runtime": runtime}
    with tempfile.TemporaryDirectory(prefix=f"wpt-{runtime}-") as tmp:
        workdir = Path(tmp)
        bundle = workdir / "bundle.js"
        bundle.write_text(bundle_text, encoding="utf-8")
        port = free_port()
        cmd = command(runtime, args, bundle, port, workdir)
        proc_env = dict(os.environ)
        proc_env.setdefault("DENO_NO_UPDATE_CHECK", "1")
        proc_env["NO_COLOR"] = "1"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=proc_env,
                                    start_new_session=True)
            with LIVE_LOCK:
                LIVE.add(proc)
            try:
                problem = wait_listening(port, proc, time.monotonic() + args.startup_timeout)
                if problem:
                    result.update(error=f"runtime {problem}", tests=[])
                else:
                    result.update(request(port, timeout_ms / 1000 + args.grace))
            finally:
                stop(proc)
                with LIVE_LOCK:
                    LIVE.discard(proc)
    result["seconds"] = round(time.monotonic() - started, 2)
    if result.get("error"):
        result["log_tail"] = tail(log_path)
    return result


def request(port: int, timeout_s: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": f"127.0.0.1:{port}", "Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        return {"error": f"request failed: {type(e).__name__}: {e}", "tests": []}
    finally:
        conn.close()
    if response.status != 200:
        return {"error": f"HTTP {response.status}: {body[:500].decode('utf-8', 'replace')}",
                "tests": []}
    try:
        data = json.loads(body)
    except ValueError as e:
        return {"error": f"bad JSON: {e}: {body[:300]!r}", "tests": []}
    if not isinstance(data, dict):
        return {"error": "bad JSON shape", "tests": []}
    data.setdefault("tests", [])
    return data


# --------------------------------------------------------------------------
# Results


def raw_path(out: Path, runtime: str, test_rel: str) -> Path:
    return out / "raw" / runtime / (test_rel.replace("/", "__") + ".json")


def load_raw(out: Path, runtime: str, test_rel: str) -> dict | None:
    path = raw_path(out, runtime, test_rel)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def by_name(result: dict | None) -> dict[str, dict[str, str]]:
    """Subtest name -> {status: message}; a repeated name counts once per status."""
    names: dict[str, dict[str, str]] = {}
    for t in (result or {}).get("tests", []):
        names.setdefault(t["name"], {}).setdefault(t["status"], t.get("message", ""))
    return names


def counts(result: dict | None) -> dict:
    names = by_name(result)
    c = {"tests": len(names)}
    for status in TEST_STATUS:
        c[status] = sum(1 for statuses in names.values() if status in statuses)
    return c


def file_note(result: dict | None) -> str:
    if result is None:
        return "not run"
    bits = []
    if result.get("error"):
        bits.append(result["error"])
    if result.get("loadError"):
        bits.append("load error: " + result["loadError"].splitlines()[0])
    harness = result.get("harness") or {}
    if harness.get("status") not in (None, "OK"):
        bits.append(f"harness {harness.get('status')}: {harness.get('message', '')}")
    return " | ".join(b.replace("\t", " ").replace("\n", " ")[:300] for b in bits)


def write_tsv(out: Path, runtime: str, files: list[str]) -> None:
    lines = ["file\ttests\tpass\tfail\ttimeout\tnotrun\tprecondition_failed\tseconds\tnote"]
    for f in files:
        r = load_raw(out, runtime, f)
        c = counts(r)
        lines.append("\t".join(str(x) for x in [
            f, c["tests"], c["PASS"], c["FAIL"], c["TIMEOUT"], c["NOTRUN"],
            c["PRECONDITION_FAILED"], (r or {}).get("seconds", ""), file_note(r)]))
    (out / f"{runtime}.tsv").write_text("\n".join(lines) + "\n")


def group_of(test_rel: str, dirs: list[str]) -> str:
    for d in sorted(dirs, key=len, reverse=True):
        if test_rel.startswith(d + "/"):
            rest = test_rel[len(d) + 1:]
            sub = rest.split("/")[0] if "/" in rest else ""
            return f"{d}/{sub}" if sub else d
    return test_rel.split("/")[0]


def normalize_message(message: str) -> str:
    m = message.splitlines()[0] if message else "(no message)"
    m = re.sub(r'"([^"]{60})[^"]+"', r'"\1…"', m)
    m = re.sub(r"\b\d+\b", "N", m)
    return m[:200]


def report(out: Path, files: list[str], runtimes: list[str], dirs: list[str]) -> None:
    for rt in runtimes:
        write_tsv(out, rt, files)
    known = [rt for rt in RUNTIMES if (out / "raw" / rt).exists()]
    # Combined table.
    combined = ["file\ttests\t" + "\t".join(f"{rt}_pass" for rt in known)]
    groups: dict[str, dict] = {}
    for f in files:
        results = {rt: load_raw(out, rt, f) for rt in known}
        cs = {rt: counts(results[rt]) for rt in known}
        total = max((c["tests"] for c in cs.values()), default=0)
        combined.append(f"{f}\t{total}\t" + "\t".join(
            str(cs[rt]["PASS"]) if results[rt] is not None else "-" for rt in known))
        g = groups.setdefault(group_of(f, dirs), {"files": 0, "tests": 0, **{rt: 0 for rt in known}})
        g["files"] += 1
        g["tests"] += total
        for rt in known:
            g[rt] += cs[rt]["PASS"]
    (out / "combined.tsv").write_text("\n".join(combined) + "\n")

    header = f"{'directory':44} {'files':>5} {'tests':>7} " + " ".join(f"{rt:>8}" for rt in known)
    lines = [header, "-" * len(header)]
    total = {"files": 0, "tests": 0, **{rt: 0 for rt in known}}
    for name in sorted(groups):
        g = groups[name]
        for k in total:
            total[k] += g[k]
        lines.append(f"{name:44} {g['files']:>5} {g['tests']:>7} " + " ".join(f"{g[rt]:>8}" for rt in known))
    lines.append("-" * len(header))
    lines.append(f"{'total':44} {total['files']:>5} {total['tests']:>7} " + " ".join(f"{total[rt]:>8}" for rt in known))
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)

    if "isopod" in known and "deno" in known:
        write_diff(out, files, dirs)


def write_diff(out: Path, files: list[str], dirs: list[str]) -> None:
    diff = []
    patterns: dict[tuple[str, str], int] = {}
    per_file = []
    for f in files:
        iso_r, deno_r = load_raw(out, "isopod", f), load_raw(out, "deno", f)
        if iso_r is None or deno_r is None:
            continue
        iso, deno = by_name(iso_r), by_name(deno_r)
        ci, cd = counts(iso_r), counts(deno_r)
        if ci["PASS"] >= cd["PASS"]:
            continue
        lost = [n for n, s in deno.items() if "PASS" in s and "PASS" not in iso.get(n, {})]
        per_file.append((f, ci["PASS"], cd["PASS"], len(lost)))
        diff.append(f"=== {f}: isopod {ci['PASS']} / deno {cd['PASS']} of {max(ci['tests'], cd['tests'])}"
                    f" ({len(lost)} subtests deno passes and isopod does not)")
        note = file_note(iso_r)
        if note:
            diff.append(f"    isopod file note: {note}")
        for n in lost:
            statuses = iso.get(n)
            if statuses is None:
                status, msg = "MISSING", "(no such subtest in isopod's results)" + (
                    f" [{note}]" if note else "")
            else:
                status, msg = next(iter(statuses.items()))
            diff.append(f"  [{status}] {n}\n      {msg.splitlines()[0] if msg else ''}"[:600])
            if status == "MISSING":
                why = normalize_message(note) if note else f"name not in isopod's results ({os.path.basename(f)})"
                key = (group_of(f, dirs), f"MISSING: {why}")
            else:
                key = (group_of(f, dirs), f"{status}: {normalize_message(msg)}")
            patterns[key] = patterns.get(key, 0) + 1
    (out / "diff.txt").write_text("\n".join(diff) + "\n")
    lines = ["# files where isopod passes fewer subtests than deno", "file\tisopod\tdeno\tlost"]
    lines += [f"{f}\t{a}\t{b}\t{n}" for f, a, b, n in per_file]
    lines += ["", "# lost subtests grouped by directory and normalized isopod message", "count\tdirectory\tmessage"]
    for (g, m), n in sorted(patterns.items(), key=lambda kv: -kv[1]):
        lines.append(f"{n}\t{g}\t{m}")
    (out / "diff-summary.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wpt", type=Path, default=Path("/tmp/wpt"), help="WPT checkout (default /tmp/wpt)")
    p.add_argument("--out", type=Path, default=Path("/tmp/wpt-results"), help="results directory")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated: isopod,deno,workerd")
    p.add_argument("--only", action="append", default=[],
                   help="run only files whose path contains this substring (repeatable)")
    p.add_argument("--dirs", default=",".join(DEFAULT_DIRS), help="WPT directories to scan")
    p.add_argument("--jobs", type=int, default=2, help="runtime processes at once (default 2)")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds per file before the harness is timed out (x2 for META timeout=long)")
    p.add_argument("--grace", type=float, default=30, help="extra seconds the HTTP request may take")
    p.add_argument("--startup-timeout", type=float, default=30, help="seconds to wait for a runtime to listen")
    p.add_argument("--resource-port", type=int, default=8737,
                   help="loopback port of the static server for WPT resources (same for every runtime)")
    p.add_argument("--isopod-limit", action="append",
                   help="--limit KEY=VALUE for isopod run (repeatable; default cpu_ms=30000,"
                        " startup_cpu_ms=30000, response_timeout_ms=300000, subrequests=100000)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables from raw results")
    p.add_argument("--list", action="store_true", help="list the files that would run, and skipped ones")
    for rt in RUNTIMES:
        p.add_argument(f"--{rt}-bin", default=DEFAULT_BIN[rt], help=f"{rt} binary (default {DEFAULT_BIN[rt]})")
    args = p.parse_args()
    if args.isopod_limit is None:
        args.isopod_limit = ["cpu_ms=30000", "startup_cpu_ms=30000", "response_timeout_ms=300000",
                             "subrequests=100000"]
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for rt in runtimes:
        if rt not in RUNTIMES:
            p.error(f"unknown runtime {rt}")
    dirs = [d.strip().strip("/") for d in args.dirs.split(",") if d.strip()]
    if not (args.wpt / "resources/testharness.js").exists():
        p.error(f"{args.wpt}/resources/testharness.js not found")
    args.out.mkdir(parents=True, exist_ok=True)

    found = discover(args.wpt, dirs, args.only)
    files = [f for f, skip in found if not skip]
    skipped = [(f, skip) for f, skip in found if skip]
    (args.out / "skipped.txt").write_text("".join(f"{f}\t{s}\n" for f, s in skipped))
    if args.list:
        for f in files:
            print(f)
        for f, s in skipped:
            print(f"# skipped {f}: {s}")
        return 0
    if not args.report_only:
        for rt in runtimes:
            binary = getattr(args, f"{rt}_bin")
            if not (os.path.exists(binary) or shutil.which(binary)):
                p.error(f"{rt} binary {binary} not found")
        signal.signal(signal.SIGTERM, stop_all)
        signal.signal(signal.SIGINT, stop_all)
        env = Env(args.wpt, args.resource_port)
        server = start_resource_server(args.wpt, args.resource_port)
        tasks = [(rt, f) for f in files for rt in runtimes]
        print(f"{len(files)} files ({len(skipped)} skipped) x {len(runtimes)} runtimes, {args.jobs} jobs",
              file=sys.stderr)
        done_count = 0
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = {pool.submit(run_one, rt, f, args, env): (rt, f) for rt, f in tasks}
                for fut in concurrent.futures.as_completed(futures):
                    rt, f = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as e:  # a runner bug: keep going
                        result = {"file": f, "runtime": rt, "error": f"runner: {e!r}", "tests": []}
                    path = raw_path(args.out, rt, f)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(result, indent=1))
                    done_count += 1
                    c = counts(result)
                    note = file_note(result)
                    print(f"[{done_count}/{len(tasks)}] {rt:8} {f}: {c['PASS']}/{c['tests']}"
                          f" ({result.get('seconds')}s){'  ' + note[:160] if note else ''}",
                          file=sys.stderr, flush=True)
        finally:
            server.shutdown()
    report(args.out, files, runtimes, dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
