// Stand-ins for deno modules that deno_fetch imports but isopod does not
// ship: deno's TLS key loader (for Deno.createHttpClient, which tenants
// cannot reach) and deno's OpenTelemetry hooks (tracing is off in isopod).
// They must be installed before `ext:deno_fetch/26_fetch.js` is loaded.
import { internals } from "ext:core/mod.js";

const noopSpan = {
  end() {},
  setAttribute() {},
  setAttributes() {},
  setStatus() {},
  recordException() {},
  isRecording() {
    return false;
  },
};

internals.__telemetry = {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  builtinTracer() {
    return { startSpan: () => noopSpan };
  },
  ContextManager: { active: () => undefined },
  DID_NOT_ENTER: {},
  enterSpan() {
    return undefined;
  },
  exitSpan() {},
  restoreSnapshot() {},
};

internals.__telemetryUtil = {
  updateSpanFromClientResponse() {},
  updateSpanFromError() {},
  updateSpanFromRequest() {},
};

// deno_crypto brands Node KeyObjects with this symbol; isopod has none, but
// the key must exist so CryptoKeys are branded correctly.
internals.kKeyObject = Symbol("isopod.kKeyObject");
