#!/usr/bin/env node
// Runs one isopod test bundle under miniflare (Cloudflare's local Workers
// simulator, on workerd) and prints what it answered, so isopod's answers
// for the same bundle can be compared with it.
//
//   node scripts/miniflare/run.mjs BUNDLE.js [PATH_AND_QUERY]
//        [--request PATH_AND_QUERY]... [--kv BINDING[=NAMESPACE]]...
//        [--d1 BINDING[=DATABASE]]... [--compatibility-date YYYY-MM-DD]
//
// BUNDLE.js is loaded as an ES module worker. Each request is a GET to
// http://localhost + PATH_AND_QUERY, sent in order to the same miniflare
// instance (so KV and D1 state carries from one request to the next).
// With one request its body is written to stdout exactly as received (no
// newline added); with several, stdout gets a JSON array of the bodies as
// strings, one element per line. KV namespaces and D1 databases live in a
// temporary directory that miniflare removes when disposed.
//
// Exit status: 0 once every request got a response, whatever its HTTP status
// (a status other than 2xx is noted on stderr; an uncaught exception in the
// worker comes back as a 500 whose body is the stack); 2 for a usage error;
// 1 if the bundle cannot be read or miniflare failed. The worker's console
// output goes to stderr, never stdout.

import { readFile } from "node:fs/promises";
import path from "node:path";
import { Miniflare } from "miniflare";

const USAGE =
  "usage: node scripts/miniflare/run.mjs BUNDLE.js [PATH_AND_QUERY] " +
  "[--request PATH_AND_QUERY]... [--kv BINDING[=NAMESPACE]]... " +
  "[--d1 BINDING[=DATABASE]]... [--compatibility-date YYYY-MM-DD]";

function usage(message) {
  process.stderr.write(`run.mjs: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    bundle: undefined,
    requests: [],
    kv: {},
    d1: {},
    compatibilityDate: "2025-09-01",
  };
  const value = (i, flag) => {
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    return argv[i + 1];
  };
  const binding = (spec, flag) => {
    const eq = spec.indexOf("=");
    const name = eq === -1 ? spec : spec.slice(0, eq);
    const target = eq === -1 ? spec : spec.slice(eq + 1);
    if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name)) {
      usage(`${flag}: "${name}" is not a binding name`);
    }
    if (target === "") usage(`${flag}: empty name after "=" in "${spec}"`);
    return [name, target];
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    // Accept both "--flag value" and "--flag=value".
    const m = /^(--[a-z0-9-]+)=(.*)$/s.exec(arg);
    const flag = m ? m[1] : arg;
    const take = () => (m ? m[2] : (i++, argv[i]));
    switch (flag) {
      case "-h":
      case "--help":
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
      case "--request":
        if (!m) value(i, flag);
        opts.requests.push(take());
        break;
      case "--kv": {
        if (!m) value(i, flag);
        const [name, ns] = binding(take(), flag);
        opts.kv[name] = ns;
        break;
      }
      case "--d1": {
        if (!m) value(i, flag);
        const [name, db] = binding(take(), flag);
        opts.d1[name] = db;
        break;
      }
      case "--compatibility-date":
        if (!m) value(i, flag);
        opts.compatibilityDate = take();
        break;
      default:
        if (arg.startsWith("--")) usage(`unknown option ${arg}`);
        if (opts.bundle === undefined) opts.bundle = arg;
        else opts.requests.push(arg);
    }
  }
  if (opts.bundle === undefined) usage("no bundle given");
  if (opts.requests.length === 0) usage("no request given");
  for (const [a, b] of Object.entries(opts.kv)) {
    if (a in opts.d1) usage(`binding ${a} given to both --kv and --d1 (${b})`);
  }
  return opts;
}

function requestUrl(pathAndQuery) {
  const p = pathAndQuery.startsWith("/") ? pathAndQuery : `/${pathAndQuery}`;
  return `http://localhost${p}`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const scriptPath = path.resolve(opts.bundle);
  let script;
  try {
    script = await readFile(scriptPath, "utf8");
  } catch (e) {
    process.stderr.write(`run.mjs: cannot read ${opts.bundle}: ${e.message}\n`);
    process.exit(1);
  }

  const mf = new Miniflare({
    modules: true,
    script,
    scriptPath,
    // Name the module after its file alone: a bundle outside the working
    // directory would otherwise get a "../" name, which workerd refuses.
    modulesRoot: path.dirname(scriptPath),
    compatibilityDate: opts.compatibilityDate,
    kvNamespaces: opts.kv,
    d1Databases: opts.d1,
    kvPersist: false,
    d1Persist: false,
    // Keep the worker's console output off stdout, which carries the answer.
    handleRuntimeStdio(stdout, stderr) {
      stdout.pipe(process.stderr);
      stderr.pipe(process.stderr);
    },
  });

  let failed = false;
  try {
    const bodies = [];
    for (const pathAndQuery of opts.requests) {
      const response = await mf.dispatchFetch(requestUrl(pathAndQuery), { method: "GET" });
      const body = Buffer.from(await response.arrayBuffer());
      if (response.status < 200 || response.status > 299) {
        process.stderr.write(`run.mjs: GET ${pathAndQuery} answered ${response.status}\n`);
      }
      bodies.push(body);
    }
    if (bodies.length === 1) {
      await write(bodies[0]);
    } else {
      const lines = bodies.map((b) => JSON.stringify(b.toString("utf8")));
      await write(`[\n${lines.join(",\n")}\n]\n`);
    }
  } catch (e) {
    failed = true;
    process.stderr.write(`run.mjs: miniflare failed: ${e?.stack ?? e}\n`);
  } finally {
    try {
      await mf.dispose();
    } catch (e) {
      // A runtime that never started fails again here: report it once.
      if (!failed) {
        failed = true;
        process.stderr.write(`run.mjs: disposing miniflare failed: ${e?.stack ?? e}\n`);
      }
    }
  }
  process.exitCode = failed ? 1 : 0;
}

function write(data) {
  return new Promise((resolve, reject) => {
    process.stdout.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

main().catch((e) => {
  process.stderr.write(`run.mjs: ${e?.stack ?? e}\n`);
  process.exit(1);
});
