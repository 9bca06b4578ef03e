// isopod's global scope: the WinterCG / Workers surface, assembled from the
// deno extensions' lazily loaded scripts, plus the request dispatcher that the
// runtime calls for every request.
//
// Invariants:
// - Runs once, at snapshot time. Everything it installs lives in the snapshot.
// - Tenant code never sees `Deno`, `__bootstrap`, or any op: everything the
//   dispatcher needs is captured in this module's closures. The only handle
//   left on the global object is `__isopodInit`, which the runtime calls (and
//   deletes) before any tenant code runs.
import { core, primordials } from "ext:core/mod.js";
import "ext:isopod_api/00_stubs.js";
import { registerErrorClasses } from "ext:isopod_api/04_error_classes.js";
import { configureKv, kvBinding } from "ext:isopod_bindings/kv.js";
import { d1Binding } from "ext:isopod_bindings/d1.js";

const {
  ArrayBuffer,
  ArrayBufferIsView,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  Date: OriginalDate,
  DateNow,
  DatePrototypeToString,
  Float64Array,
  FunctionPrototypeCall,
  MathFloor,
  ObjectDefineProperty,
  ObjectDefineProperties,
  ObjectFreeze,
  ObjectGetOwnPropertyDescriptor,
  ObjectGetOwnPropertyNames,
  ObjectPrototypeIsPrototypeOf,
  ObjectSetPrototypeOf,
  PromisePrototypeCatch,
  PromisePrototypeThen,
  PromiseReject,
  PromiseResolve,
  ReflectApply,
  ReflectConstruct,
  SafePromiseAllSettled,
  SafeWeakMap,
  SafeWeakSet,
  SymbolToStringTag,
  String: StringConstructor,
  StringPrototypeEndsWith,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeSplit,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  StringPrototypeTrim,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteOffset,
  TypeError,
  TypeErrorPrototype,
  Uint32Array,
  Uint8Array,
} = primordials;

const {
  op_isopod_log,
  op_isopod_fail,
  op_isopod_uncaught,
  op_isopod_fetched,
  op_isopod_fetch_refusal,
  op_isopod_clock,
  op_isopod_in_crypto_pool,
  op_void_async_deferred,
} = core.ops;

// The ops every request calls: the snapshot's slow versions until
// `__isopodInit` replaces them with their fast-call overloads (see
// 03_fast_ops.js), which V8 calls from optimised code without the API
// callback's argument conversion.
let {
  op_isopod_respond,
  op_isopod_respond_text,
  op_isopod_respond_bytes,
  op_isopod_respond_stream,
  op_isopod_done,
} = core.ops;
function takeFastOps() {
  load("ext:isopod_api/03_fast_ops.js");
  ({
    op_isopod_respond,
    op_isopod_respond_text,
    op_isopod_respond_bytes,
    op_isopod_respond_stream,
    op_isopod_done,
  } = core.ops);
}

// ---------------------------------------------------------------------------
// Version snapshots (isopod-runtime's version_snapshot.rs): a version's
// top-level code runs once in a snapshotting isolate, and its instances start
// from the heap it left. While it runs, anything that would be wrong to share
// between instances (randomness, the time) or that lives outside the heap (a
// WebAssembly module, an outbound fetch) is recorded here as a taint, and a
// tainted version is loaded from source instead. `null` outside that run.
let snapshotTaints = null;
function taint(what) {
  if (snapshotTaints !== null && !ArrayPrototypeIncludes(snapshotTaints, what)) {
    ArrayPrototypePush(snapshotTaints, what);
  }
}

// ---------------------------------------------------------------------------
// The coarse clock (Spectre hygiene, as workerd does it): time does not
// advance while JavaScript runs. `clock` is a Float64Array [wall ms,
// monotonic ms] over a buffer the host rewrites each time it enters the
// isolate (isopod_api's clock.rs); reading it costs no op call. Everything
// that tells the time reads it: Date, performance (now, mark, measure,
// timeOrigin) and Intl.DateTimeFormat's "now". `null` until __isopodInit
// registers the isolate's buffer (at snapshot time there is none).
let clock = null;
let monotonicOrigin = 0;
// Without a clock buffer (while a snapshot is being made) a reading is a
// taint: every instance started from the snapshot would share it.
const wallNow = () => clock === null ? (taint("the clock"), DateNow()) : clock[0];
const monotonicNow = () =>
  clock === null ? (taint("the clock"), 0) : clock[1] - monotonicOrigin;

// deno's performance module fills an 8-byte buffer with (seconds,
// nanoseconds) through op_now and op_time_origin, taken from the ops its
// `__bootstrap` carries when it is loaded. It is first loaded below, so
// replacing the two ops there first makes all of it (now(), mark(),
// measure(), timeOrigin) read the coarse clock.
let timeBuffer = null;
let timeWords = null;
function writeTime(buffer, ms) {
  if (buffer !== timeBuffer) {
    timeBuffer = buffer;
    timeWords = new Uint32Array(
      TypedArrayPrototypeGetBuffer(buffer),
      TypedArrayPrototypeGetByteOffset(buffer),
      2,
    );
  }
  const seconds = MathFloor(ms / 1000);
  timeWords[0] = seconds;
  timeWords[1] = (ms - seconds * 1000) * 1e6;
}
const load = (specifier) => core.loadExtScript(specifier);

{
  const { ops } = load("ext:isopod_api/02_captured_ops.js");
  ops.op_now = (buffer) => writeTime(buffer, monotonicNow());
  ops.op_time_origin = (buffer) =>
    writeTime(buffer, wallNow() - monotonicNow());
}

const webidl = load("ext:deno_webidl/00_webidl.js");
const url = load("ext:deno_web/00_url.js");
const urlPattern = load("ext:deno_web/01_urlpattern.js");
const domException = load("ext:deno_web/01_dom_exception.js");
const event = load("ext:deno_web/02_event.js");
const timers = load("ext:deno_web/02_timers.js");
const abortSignal = load("ext:deno_web/03_abort_signal.js");
const base64 = load("ext:deno_web/05_base64.js");
const streams = load("ext:deno_web/06_streams.js");
const encoding = load("ext:deno_web/08_text_encoding.js");
const file = load("ext:deno_web/09_file.js");
const compression = load("ext:deno_web/14_compression.js");
const performance = load("ext:deno_web/15_performance.js");
const consoleMod = load("ext:deno_web/01_console.js");
const headers = load("ext:deno_fetch/20_headers.js");
const formData = load("ext:deno_fetch/21_formdata.js");
const body = load("ext:deno_fetch/22_body.js");
const request = load("ext:deno_fetch/23_request.js");
const response = load("ext:deno_fetch/23_response.js");
const fetch = load("ext:deno_fetch/26_fetch.js");
// MessageChannel and MessagePort, and the structuredClone that transfers
// (ArrayBuffers, ports, streams) and refuses platform objects (a URL, a
// Request) with a DataCloneError.
const messagePort = load("ext:deno_web/13_message_port.js");
const fileReader = load("ext:deno_web/10_filereader.js");
// The KV binding's values are text, JSON, bytes or streams.
configureKv({
  TextEncoder: encoding.TextEncoder,
  TextDecoder: encoding.TextDecoder,
  ReadableStream: streams.ReadableStream,
  Response,
});
const crypto = load("ext:deno_crypto/00_crypto.js");

// ---------------------------------------------------------------------------
// console: every record goes to the host as (level, request id, text). The
// request id comes from an async-context variable set around each handler
// call, so interleaved requests on one isolate are told apart.
// The request's context object `{ id, method, url }` is itself V8's
// continuation-preserved value: promise reactions and deno's timers carry it
// from the handler to everything it schedules, and records made after the
// request completed (a late rejection, waitUntil work) still name it. (deno's
// AsyncVariable would cost a WeakMap entry per request, and the young-GC
// ephemeron work that comes with it.)
const kRequestContext = Symbol("isopod.requestContext");
const NO_REQUEST = { id: 0, method: "", url: "" };
// `METHOD /path`, for log records: made only when something is logged.
function requestLabel(context) {
  if (context.id === 0) {
    return "";
  }
  const url = context.url;
  const scheme = StringPrototypeIndexOf(url, "://");
  const path = scheme < 0 ? -1 : StringPrototypeIndexOf(url, "/", scheme + 3);
  return `${context.method} ${path < 0 ? "/" : StringPrototypeSlice(url, path)}`;
}
const currentRequest = () => {
  const context = core.getAsyncContext();
  return context?.[kRequestContext] === true ? context : NO_REQUEST;
};
const enterRequest = (context) => {
  const previous = core.getAsyncContext();
  core.setAsyncContext(context);
  return previous;
};

consoleMod.setNoColorFns(() => true, () => true);
const LOG_LEVELS = { __proto__: null, 0: 0, 1: 1, 2: 2, 3: 3 };
const hostConsole = new consoleMod.Console((msg, level) => {
  const text = StringPrototypeEndsWith(msg, "\n")
    ? StringPrototypeSlice(msg, 0, -1)
    : msg;
  const context = currentRequest();
  op_isopod_log(LOG_LEVELS[level] ?? 1, context.id, requestLabel(context), text);
});

// ---------------------------------------------------------------------------
// Errors raised by ops carry a class name; every name the deno crates can
// raise gets the class deno gives it (04_error_classes.js).
registerErrorClasses(core, domException);

// ---------------------------------------------------------------------------
// Outbound fetch policy (isopod_api's permissions.rs). deno refuses a fetch
// in one of two places: before the request (core's NotCapable permission
// error naming the host) or while connecting (a TypeError "fetch failed"
// whose cause carries deno's or isopod's resolver's refusal). Both reach the
// tenant as a TypeError saying what was refused and why, e.g. "fetch to
// 127.0.0.1:9000 refused: loopback addresses are not reachable from isopod
// apps"; the reason is worked out in Rust, which knows the app's policy.
// Each fetch's outcome is counted for the host's metrics (host.rs's
// `FetchOutcome`, by index).
const FETCH_RESPONSE = 0;
const FETCH_FAILED = 1;
const FETCH_REFUSED = 2;
function countResponse(response) {
  op_isopod_fetched(FETCH_RESPONSE);
  return response;
}
function explainRefusal(error) {
  if (ObjectPrototypeIsPrototypeOf(core.NotCapablePrototype, error)) {
    op_isopod_fetched(FETCH_REFUSED);
    const text = `${error.message}`;
    throw new TypeError(op_isopod_fetch_refusal(text) ?? text);
  }
  if (ObjectPrototypeIsPrototypeOf(TypeErrorPrototype, error)) {
    const cause = error.cause;
    if (cause !== null && typeof cause === "object") {
      const text = cause.message;
      const message = typeof text === "string"
        ? op_isopod_fetch_refusal(text)
        : null;
      if (message !== null) {
        op_isopod_fetched(FETCH_REFUSED);
        throw new TypeError(message);
      }
    }
  }
  op_isopod_fetched(FETCH_FAILED);
  throw error;
}
const isopodFetch = {
  fetch(input, init = undefined) {
    const fetched = fetch.fetch(input, init);
    // A fetch whose signal was already aborted is rejected before it
    // returns (Fetch: "abort the fetch() call" at once), and no refusal
    // needs explaining: handed on as it is, it stays rejected a microtask
    // sooner than the explaining reaction could reject.
    if (alreadyAborted(input, init)) {
      op_isopod_fetched(FETCH_FAILED);
      return fetched;
    }
    return PromisePrototypeThen(fetched, countResponse, explainRefusal);
  },
}.fetch;
function alreadyAborted(input, init) {
  const signal = init !== null && typeof init === "object" && init.signal != null
    ? init.signal
    : ObjectPrototypeIsPrototypeOf(request.RequestPrototype, input)
    ? input.signal
    : null;
  return ObjectPrototypeIsPrototypeOf(abortSignal.AbortSignalPrototype, signal) &&
    signal.aborted;
}

// ---------------------------------------------------------------------------
// WebCrypto: cost bounds, and where the work runs.
//
// Once started, an operation runs to completion on its thread: it cannot be
// interrupted, only charged for afterwards. So the parameters that set an
// operation's cost, which deno leaves unbounded, are capped, and refused
// past the cap with a NotSupportedError before any work is done: PBKDF2's
// iterations at workerd's 100,000; Argon2's memory at 64 MiB (65,536 KiB)
// and its passes at 10; generated RSA moduli at 4,096 bits.
//
// The algorithm dictionary is read here once and handed on with its `name`
// (and each bounded member) fixed as own data properties, so a getter
// cannot show this check one value and deno another. The conversions are
// deno's: `name` to a string, a bounded member to a number and then to an
// unsigned 32-bit integer (so 2**32 + 5 counts as 5, as it does for deno).
// A bound: the member it caps, the cap, and the refusal (the requested
// value is appended).
const costBound = (member, max, refusal) => ({ member, max, refusal });
const ARGON2_BOUNDS = [
  costBound("memory", 65_536, "Argon2 with more than 65536 KiB of memory is not supported"),
  costBound("passes", 10, "Argon2 with more than 10 passes is not supported"),
];
const DERIVE_BOUNDS = {
  __proto__: null,
  PBKDF2: [
    costBound("iterations", 100_000, "PBKDF2 with more than 100000 iterations is not supported"),
  ],
  ARGON2I: ARGON2_BOUNDS,
  ARGON2D: ARGON2_BOUNDS,
  ARGON2ID: ARGON2_BOUNDS,
};
const RSA_KEYGEN_BOUNDS = [
  costBound("modulusLength", 4096, "RSA keys longer than 4096 bits are not generated"),
];
const KEYGEN_BOUNDS = {
  __proto__: null,
  "RSASSA-PKCS1-V1_5": RSA_KEYGEN_BOUNDS,
  "RSA-PSS": RSA_KEYGEN_BOUNDS,
  "RSA-OAEP": RSA_KEYGEN_BOUNDS,
};
function definedOwn(object, member, value) {
  ObjectDefineProperty(object, member, {
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}
function boundedAlgorithm(algorithm, boundsByName) {
  if (
    algorithm === null ||
    (typeof algorithm !== "object" && typeof algorithm !== "function")
  ) {
    return algorithm;
  }
  const name = algorithm.name;
  if (name === undefined) {
    return { __proto__: algorithm, name };
  }
  const nameString = `${name}`;
  const bounded = { __proto__: algorithm, name: nameString };
  const bounds = boundsByName[StringPrototypeToUpperCase(nameString)];
  if (bounds === undefined) {
    return bounded;
  }
  for (let i = 0; i < bounds.length; i++) {
    const { member, max, refusal } = bounds[i];
    const raw = algorithm[member];
    if (raw === undefined) {
      definedOwn(bounded, member, undefined);
      continue;
    }
    const value = (+raw) >>> 0;
    if (value > max) {
      throw new domException.DOMException(
        `${refusal} (${value} requested)`,
        "NotSupportedError",
      );
    }
    definedOwn(bounded, member, value);
  }
  return bounded;
}
{
  const proto = crypto.SubtleCrypto.prototype;
  const deriveBits = proto.deriveBits;
  const deriveKey = proto.deriveKey;
  const generateKey = proto.generateKey;
  const bounded = {
    async deriveBits(algorithm, baseKey, length = undefined) {
      return await FunctionPrototypeCall(
        deriveBits,
        this,
        boundedAlgorithm(algorithm, DERIVE_BOUNDS),
        baseKey,
        length,
      );
    },
    async deriveKey(algorithm, baseKey, derivedKeyType, extractable, usages) {
      return await FunctionPrototypeCall(
        deriveKey,
        this,
        boundedAlgorithm(algorithm, DERIVE_BOUNDS),
        baseKey,
        derivedKeyType,
        extractable,
        usages,
      );
    },
    async generateKey(algorithm, extractable, usages) {
      return await FunctionPrototypeCall(
        generateKey,
        this,
        boundedAlgorithm(algorithm, KEYGEN_BOUNDS),
        extractable,
        usages,
      );
    },
  };
  for (const name of ["deriveBits", "deriveKey", "generateKey"]) {
    ObjectDefineProperty(proto, name, {
      value: bounded[name],
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }

  // Every method then runs with the isolate's own crypto thread as the
  // place deno's `spawn_blocking` sends work to (isopod_api's crypto.rs):
  // one thread per isolate bounds the work, and the host charges its CPU
  // to the isolate's requests. Name and `length` are the method's own.
  //
  // deno's op driver spawns its polling task onto whichever tokio runtime
  // is current when the isolate's first async op goes pending; that must
  // be the isolate's own thread's, not the crypto pool's (which nothing
  // drives), so one async op is made pending before the first crypto call.
  let opDriverStarted = false;
  const inCryptoPool = (call) => {
    if (!opDriverStarted) {
      opDriverStarted = true;
      op_void_async_deferred();
    }
    return op_isopod_in_crypto_pool(call);
  };
  const names = ObjectGetOwnPropertyNames(proto);
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    const descriptor = ObjectGetOwnPropertyDescriptor(proto, name);
    if (name === "constructor" || typeof descriptor.value !== "function") {
      continue;
    }
    const method = descriptor.value;
    const wrapped = {
      [name](...args) {
        try {
          return inCryptoPool(() => ReflectApply(method, this, args));
        } catch (error) {
          return PromiseReject(error);
        }
      },
    }[name];
    ObjectDefineProperty(wrapped, "length", {
      value: method.length,
      configurable: true,
    });
    ObjectDefineProperty(proto, name, { ...descriptor, value: wrapped });
  }

  // Workers' extension: compares two buffers in time that depends only on
  // their length. Synchronous, so not in the crypto pool.
  ObjectDefineProperty(proto, "timingSafeEqual", {
    value: {
      timingSafeEqual(a, b) {
        const prefix = "Failed to execute 'timingSafeEqual' on 'SubtleCrypto'";
        webidl.assertBranded(this, crypto.SubtleCrypto.prototype);
        webidl.requiredArguments(arguments.length, 2, prefix);
        const left = bufferBytes(a, prefix, "Argument 1");
        const right = bufferBytes(b, prefix, "Argument 2");
        if (left.byteLength !== right.byteLength) {
          throw new TypeError("Input buffers must have the same byte length");
        }
        let difference = 0;
        for (let i = 0; i < left.length; i++) {
          difference |= left[i] ^ right[i];
        }
        return difference === 0;
      },
    }.timingSafeEqual,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}
// The bytes of a BufferSource argument, as a Uint8Array over them.
function bufferBytes(value, prefix, context) {
  const source = webidl.converters.BufferSource(value, prefix, context);
  if (ArrayBufferIsView(source)) {
    return new Uint8Array(
      source.buffer,
      source.byteOffset,
      source.byteLength,
    );
  }
  return new Uint8Array(source);
}

// deno_core already put its `queueMicrotask` (V8's, with exceptions routed
// to the report callback below) on the global object.
const queueMicrotask = globalThis.queueMicrotask;

// ---------------------------------------------------------------------------
// Workers' extensions of Request, Response and Headers.
//
// `Response`: the global is deno's class behind a constructor that also
// reads Workers' `encodeBody` member of the init (see `manuallyEncoded`); it
// shares deno's prototype and statics, so `instanceof`, subclasses and
// responses made by deno (fetch, Response.json) are all one class.
const DenoResponse = response.Response;
function Response(body = null, init = undefined) {
  if (new.target === undefined) {
    throw new TypeError("Failed to construct 'Response': Please use the 'new' operator");
  }
  const made = ReflectConstruct(
    DenoResponse,
    arguments,
    new.target === Response ? DenoResponse : new.target,
  );
  if (
    init !== null && typeof init === "object" && init.encodeBody === "manual"
  ) {
    manuallyEncoded.add(made);
  }
  return made;
}
ObjectDefineProperties(Response, {
  prototype: {
    value: DenoResponse.prototype,
    writable: false,
    enumerable: false,
    configurable: false,
  },
  error: nonEnumerable(DenoResponse.error),
  redirect: nonEnumerable(DenoResponse.redirect),
  json: nonEnumerable(DenoResponse.json),
});
ObjectDefineProperty(DenoResponse.prototype, "constructor", nonEnumerable(Response));
// A response's WebSocket (isopod has none) and Cloudflare's properties of a
// subrequest's response (isopod's fetch has none).
ObjectDefineProperties(DenoResponse.prototype, {
  webSocket: getterOnly(function webSocket() {
    webidl.assertBranded(this, DenoResponse.prototype);
    return null;
  }),
  cf: getterOnly(function cf() {
    webidl.assertBranded(this, DenoResponse.prototype);
    return undefined;
  }),
});
// `headers.getAll("Set-Cookie")`, Workers' older form of getSetCookie().
ObjectDefineProperty(headers.Headers.prototype, "getAll", nonEnumerable({
  getAll(name) {
    webidl.assertBranded(this, headers.Headers.prototype);
    webidl.requiredArguments(arguments.length, 1, "Failed to execute 'getAll' on 'Headers'");
    if (StringPrototypeToLowerCase(`${name}`) !== "set-cookie") {
      throw new TypeError("getAll() can only be used with the header name \"Set-Cookie\".");
    }
    return FunctionPrototypeCall(headers.Headers.prototype.getSetCookie, this);
  },
}.getAll));

// `scheduler.wait(ms, { signal })`: Workers' promise of a timer.
const scheduler = ObjectFreeze({
  __proto__: null,
  wait(delay, options = undefined) {
    const signal = options?.signal;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const timer = denoSetTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, delay);
      function onAbort() {
        timers.clearTimeout(timer);
        reject(signal.reason);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  },
});

// ---------------------------------------------------------------------------
// Streams: ReadableStream.from(iterable) takes a string too (the Streams
// spec opens any iterable; a string iterates its code points), which
// deno's WebIDL conversion refuses as not an object. The string is handed
// on as its String object, whose iterator is the same.
{
  const from = streams.ReadableStream.from;
  ObjectDefineProperty(streams.ReadableStream, "from", {
    value: {
      from(asyncIterable) {
        return typeof asyncIterable === "string"
          ? FunctionPrototypeCall(from, this, new StringConstructor(asyncIterable))
          : ReflectApply(from, this, arguments);
      },
    }.from,
    writable: true,
    enumerable: false,
    configurable: true,
  });
}

// ---------------------------------------------------------------------------
// Timers: Workers' setTimeout/setInterval take only functions. deno's accept a
// string and eval it later; refusing up front makes the error surface inside
// the handler that made the call.
function requireCallback(callback, name) {
  if (typeof callback !== "function") {
    throw new TypeError(
      `${name}: the first argument must be a function; code strings are not evaluated`,
    );
  }
}
// deno's timer functions refuse a `this` other than the global object, so
// they are called unbound.
const { setTimeout: denoSetTimeout, setInterval: denoSetInterval } = timers;
function setTimeout(callback, delay = 0, ...args) {
  requireCallback(callback, "setTimeout");
  return denoSetTimeout(callback, delay, ...args);
}
function setInterval(callback, delay = 0, ...args) {
  requireCallback(callback, "setInterval");
  return denoSetInterval(callback, delay, ...args);
}

// ---------------------------------------------------------------------------
// Subrequests: each request may call fetch() at most `subrequestLimit` times
// (the app's `limits.subrequests`, set by `init`). The count lives on the
// request's context object, which follows the handler's continuations.
let subrequestLimit = 50;
const { fetch: limitedFetch } = {
  fetch(input, init = undefined) {
    const context = currentRequest();
    if (context !== NO_REQUEST && ++context.subrequests > subrequestLimit) {
      return PromiseReject(
        new TypeError(
          `too many subrequests: a request may call fetch() at most ${subrequestLimit} times`,
        ),
      );
    }
    return isopodFetch(input, init);
  },
};

// ---------------------------------------------------------------------------
// Service-worker style: the global scope is an EventTarget that receives
// `fetch` events.
const globalEvents = new event.EventTarget();
const fetchListeners = [];

function addEventListener(type, listener, options) {
  if (type === "fetch") {
    if (typeof listener === "function") {
      ArrayPrototypePush(fetchListeners, listener);
    } else if (listener && typeof listener.handleEvent === "function") {
      ArrayPrototypePush(fetchListeners, function (e) {
        return listener.handleEvent(e);
      });
    }
    return;
  }
  return globalEvents.addEventListener(type, listener, options);
}
function removeEventListener(type, listener, options) {
  return globalEvents.removeEventListener(type, listener, options);
}
function dispatchEvent(e) {
  return globalEvents.dispatchEvent(e);
}

const kRespond = Symbol("isopod.respond");
class FetchEvent extends event.Event {
  #context;
  constructor(type, init = {}, context = undefined) {
    super(type, init);
    // An own read-only property, as workerd defines it (not an accessor on
    // the prototype): code that passes on an object derived from the event
    // (a spread, `Object.create(event)`) still reads the request from it.
    ObjectDefineProperty(this, "request", {
      value: init.request,
      writable: false,
      enumerable: true,
      configurable: false,
    });
    this.#context = context;
    this[kRespond] = undefined;
  }
  respondWith(promise) {
    if (this[kRespond] !== undefined) {
      throw new domException.DOMException(
        "respondWith() was already called",
        "InvalidStateError",
      );
    }
    this[kRespond] = PromiseResolve(promise);
  }
  waitUntil(promise) {
    this.#context?.waitUntil(promise);
  }
  passThroughOnException() {}
}

// ---------------------------------------------------------------------------
// The execution context handed to module handlers as `ctx`.
class ExecutionContext {
  #request;
  constructor(request) {
    this.#request = request;
  }
  waitUntil(promise) {
    const request = this.#request;
    const settled = PromiseResolve(promise);
    if (request.waitUntil === null) {
      request.waitUntil = [settled];
    } else {
      ArrayPrototypePush(request.waitUntil, settled);
    }
  }
  passThroughOnException() {}
  get props() {
    return {};
  }
}

// ---------------------------------------------------------------------------
// The global object is a ServiceWorkerGlobalScope, as on workerd: code that
// tells the worker scopes apart (`self instanceof ServiceWorkerGlobalScope`,
// `self.constructor.name`, `Object.prototype.toString.call(self)`, the
// web-platform-tests' IDL harness) finds one. As on workerd, neither
// WorkerGlobalScope nor EventTarget is on the global's prototype chain (its
// event methods are its own), and the classes cannot be constructed.
class WorkerGlobalScope {
  constructor() {
    throw new TypeError("Illegal constructor");
  }
}
class ServiceWorkerGlobalScope {
  constructor() {
    throw new TypeError("Illegal constructor");
  }
}
for (const [scope, name] of [
  [WorkerGlobalScope, "WorkerGlobalScope"],
  [ServiceWorkerGlobalScope, "ServiceWorkerGlobalScope"],
]) {
  ObjectDefineProperty(scope.prototype, SymbolToStringTag, {
    value: name,
    writable: false,
    enumerable: false,
    configurable: true,
  });
}
// Per isolate, from __isopodInit: V8 makes each context's global object
// afresh from the snapshot.
function makeGlobalAServiceWorkerScope() {
  ObjectSetPrototypeOf(globalThis, ServiceWorkerGlobalScope.prototype);
}

// ---------------------------------------------------------------------------
// The global scope.
// As workerd answers: libraries tell the Workers runtime by this string
// (Hono's getRuntimeKey() and env(), among others).
const navigator = ObjectFreeze({
  __proto__: null,
  hardwareConcurrency: 1,
  language: "en",
  languages: ObjectFreeze(["en"]),
  platform: "",
  userAgent: "Cloudflare-Workers",
});
// Property descriptors (function declarations: used before this point too).
function nonEnumerable(value) {
  return { value, writable: true, enumerable: false, configurable: true };
}
function enumerable(value) {
  return { value, writable: true, enumerable: true, configurable: true };
}
function getterOnly(get) {
  return { get, enumerable: true, configurable: true };
}

ObjectDefineProperties(globalThis, {
  // Fetch
  fetch: enumerable(limitedFetch),
  Request: nonEnumerable(request.Request),
  Response: nonEnumerable(Response),
  Headers: nonEnumerable(headers.Headers),
  FormData: nonEnumerable(formData.FormData),
  // URL
  URL: nonEnumerable(url.URL),
  URLSearchParams: nonEnumerable(url.URLSearchParams),
  URLPattern: nonEnumerable(urlPattern.URLPattern),
  // Encoding
  TextEncoder: nonEnumerable(encoding.TextEncoder),
  TextDecoder: nonEnumerable(encoding.TextDecoder),
  TextEncoderStream: nonEnumerable(encoding.TextEncoderStream),
  TextDecoderStream: nonEnumerable(encoding.TextDecoderStream),
  atob: enumerable(base64.atob),
  btoa: enumerable(base64.btoa),
  // Streams
  ReadableStream: nonEnumerable(streams.ReadableStream),
  ReadableStreamDefaultReader: nonEnumerable(
    streams.ReadableStreamDefaultReader,
  ),
  ReadableStreamBYOBReader: nonEnumerable(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: nonEnumerable(streams.ReadableStreamBYOBRequest),
  ReadableByteStreamController: nonEnumerable(
    streams.ReadableByteStreamController,
  ),
  ReadableStreamDefaultController: nonEnumerable(
    streams.ReadableStreamDefaultController,
  ),
  WritableStream: nonEnumerable(streams.WritableStream),
  WritableStreamDefaultWriter: nonEnumerable(
    streams.WritableStreamDefaultWriter,
  ),
  WritableStreamDefaultController: nonEnumerable(
    streams.WritableStreamDefaultController,
  ),
  TransformStream: nonEnumerable(streams.TransformStream),
  TransformStreamDefaultController: nonEnumerable(
    streams.TransformStreamDefaultController,
  ),
  ByteLengthQueuingStrategy: nonEnumerable(streams.ByteLengthQueuingStrategy),
  CountQueuingStrategy: nonEnumerable(streams.CountQueuingStrategy),
  CompressionStream: nonEnumerable(compression.CompressionStream),
  DecompressionStream: nonEnumerable(compression.DecompressionStream),
  // Crypto
  crypto: getterOnly(() => crypto.crypto),
  Crypto: nonEnumerable(crypto.Crypto),
  CryptoKey: nonEnumerable(crypto.CryptoKey),
  SubtleCrypto: nonEnumerable(crypto.SubtleCrypto),
  // Timers and tasks
  setTimeout: enumerable(setTimeout),
  scheduler: enumerable(scheduler),
  clearTimeout: enumerable(timers.clearTimeout),
  setInterval: enumerable(setInterval),
  clearInterval: enumerable(timers.clearInterval),
  queueMicrotask: enumerable(queueMicrotask),
  structuredClone: enumerable(messagePort.structuredClone),
  performance: enumerable(performance.performance),
  Performance: nonEnumerable(performance.Performance),
  // Events and cancellation
  Event: nonEnumerable(event.Event),
  EventTarget: nonEnumerable(event.EventTarget),
  CustomEvent: nonEnumerable(event.CustomEvent),
  ErrorEvent: nonEnumerable(event.ErrorEvent),
  PromiseRejectionEvent: nonEnumerable(event.PromiseRejectionEvent),
  FetchEvent: nonEnumerable(FetchEvent),
  WorkerGlobalScope: nonEnumerable(WorkerGlobalScope),
  ServiceWorkerGlobalScope: nonEnumerable(ServiceWorkerGlobalScope),
  ExecutionContext: nonEnumerable(ExecutionContext),
  AbortController: nonEnumerable(abortSignal.AbortController),
  AbortSignal: nonEnumerable(abortSignal.AbortSignal),
  DOMException: nonEnumerable(domException.DOMException),
  QuotaExceededError: nonEnumerable(domException.QuotaExceededError),
  addEventListener: enumerable(addEventListener),
  removeEventListener: enumerable(removeEventListener),
  dispatchEvent: enumerable(dispatchEvent),
  reportError: enumerable(reportError),
  MessageEvent: nonEnumerable(event.MessageEvent),
  ProgressEvent: nonEnumerable(event.ProgressEvent),
  MessageChannel: nonEnumerable(messagePort.MessageChannel),
  MessagePort: nonEnumerable(messagePort.MessagePort),
  // Files
  Blob: nonEnumerable(file.Blob),
  File: nonEnumerable(file.File),
  FileReader: nonEnumerable(fileReader.FileReader),
  // Misc
  console: nonEnumerable(hostConsole),
  navigator: getterOnly(() => navigator),
  self: getterOnly(() => globalThis),
});
event.saveGlobalThisReference(globalThis);

// ---------------------------------------------------------------------------
// Date on the coarse clock. `Date.now()`, `new Date()` and `Date()` read it;
// everything else is V8's Date: `new Date(ms)`, `Date.parse`, `Date.UTC`, the
// prototype (so `instanceof Date` and subclasses work) and its methods.
function Date(year, monthIndex, day, hours, minutes, seconds, ms) {
  if (new.target === undefined) {
    return DatePrototypeToString(new OriginalDate(wallNow()));
  }
  if (arguments.length === 0) {
    return ReflectConstruct(OriginalDate, [wallNow()], new.target);
  }
  return ReflectConstruct(OriginalDate, arguments, new.target);
}
ObjectDefineProperties(Date, {
  prototype: {
    value: OriginalDate.prototype,
    writable: false,
    enumerable: false,
    configurable: false,
  },
  now: nonEnumerable({ now: () => wallNow() }.now),
  parse: nonEnumerable(OriginalDate.parse),
  UTC: nonEnumerable(OriginalDate.UTC),
});
ObjectDefineProperty(
  OriginalDate.prototype,
  "constructor",
  nonEnumerable(Date),
);
ObjectDefineProperty(globalThis, "Date", nonEnumerable(Date));

// Intl.DateTimeFormat formats "now" when given no date; V8 reads its own
// clock for that, so "now" is supplied from the coarse clock instead.
{
  const proto = Intl.DateTimeFormat.prototype;
  const formatGetter = ObjectGetOwnPropertyDescriptor(proto, "format").get;
  const formatToParts = proto.formatToParts;
  const formats = new SafeWeakMap();
  ObjectDefineProperty(proto, "format", {
    get: ObjectGetOwnPropertyDescriptor({
      get format() {
        const format = FunctionPrototypeCall(formatGetter, this);
        let coarse = formats.get(format);
        if (coarse === undefined) {
          coarse = (date) => format(date === undefined ? wallNow() : date);
          formats.set(format, coarse);
        }
        return coarse;
      },
    }, "format").get,
    enumerable: false,
    configurable: true,
  });
  ObjectDefineProperty(
    proto,
    "formatToParts",
    nonEnumerable({
      formatToParts(date) {
        return FunctionPrototypeCall(
          formatToParts,
          this,
          date === undefined ? wallNow() : date,
        );
      },
    }.formatToParts),
  );
}

// No shared memory: SharedArrayBuffer is not a global and Atomics cannot
// block (wait) or wait asynchronously (waitAsync), as on workerd. Done in
// JavaScript rather than with V8's --enable-sharedarraybuffer-per-context:
// that flag is process-wide, would have to match between the snapshot build
// and every run (and the code cache's flag key), and a shared
// WebAssembly.Memory yields SharedArrayBuffer objects either way; without
// threads shared memory is no timer, and without Atomics.wait it cannot
// block the thread. V8 installs the SharedArrayBuffer global again on every
// context it makes from the snapshot, so this runs per isolate, from
// __isopodInit.
function removeSharedMemory() {
  delete globalThis.SharedArrayBuffer;
  delete Atomics.wait;
  delete Atomics.waitAsync;
}

// ---------------------------------------------------------------------------
const UNCAUGHT_REJECTION = 0;
const UNCAUGHT_EXCEPTION = 1;

// Unhandled rejections are logged against the request that caused them and
// marked handled, so they never become a fatal event-loop error.
core.setUnhandledPromiseRejectionHandler((promise, reason) => {
  const context = currentRequest();
  op_isopod_uncaught(
    context.id,
    requestLabel(context),
    UNCAUGHT_REJECTION,
    describeError(reason),
  );
  return true;
});

// An exception thrown by a microtask or timer callback is logged the same way;
// the isolate keeps serving.
//
// HTML's "report the exception": an `error` ErrorEvent is dispatched at the
// global scope first, and a listener that cancels it has handled the error
// (nothing is logged). deno's own reporting would end the isolate when no
// listener handles it; isopod's never does. An exception thrown while an
// `error` listener runs is logged, not reported again.
let reportingException = false;
function reportException(error) {
  if (!reportingException) {
    reportingException = true;
    try {
      if (!globalEvents.dispatchEvent(errorEventFor(error))) {
        return;
      }
    } catch (listenerError) {
      logUncaughtException(listenerError);
    } finally {
      reportingException = false;
    }
  }
  logUncaughtException(error);
}
function errorEventFor(error) {
  let message = "";
  let filename = "";
  let lineno = 0;
  let colno = 0;
  try {
    const details = core.destructureError(error);
    message = details.exceptionMessage;
    const frame = details.frames[0];
    if (frame !== undefined) {
      filename = frame.fileName ?? "";
      lineno = frame.lineNumber ?? 0;
      colno = frame.columnNumber ?? 0;
    }
  } catch {
    // Not an error object V8 can describe: the event still carries it.
  }
  return new event.ErrorEvent("error", {
    cancelable: true,
    message,
    filename,
    lineno,
    colno,
    error,
  });
}
function logUncaughtException(error) {
  const context = currentRequest();
  op_isopod_uncaught(
    context.id,
    requestLabel(context),
    UNCAUGHT_EXCEPTION,
    describeError(error),
  );
}
core.setReportExceptionCallback(reportException);

// The global `reportError(e)`: reports `e` as above (deno's would end the
// isolate when no listener handles it).
function reportError(error) {
  if (arguments.length === 0) {
    throw new TypeError(
      "Failed to execute 'reportError': 1 argument required, but only 0 present.",
    );
  }
  reportException(error);
}

function describeError(error) {
  try {
    if (error && typeof error === "object" && typeof error.stack === "string") {
      return error.stack;
    }
    return consoleMod.inspect(error);
  } catch {
    return "<unprintable error>";
  }
}

// ---------------------------------------------------------------------------
// Dispatch.

const FAIL_THREW = 0;
const FAIL_NOT_A_RESPONSE = 1;

// The inner request deno_fetch's `Request` wraps, for a request from the
// host. deno_fetch's own `newInnerRequest` returns an object literal with
// accessors: every call defines fresh getter closures, so every instance got
// a hidden class of its own, made in old space, which kept the request's
// young objects alive through scavenges (a third of each one survived, and
// scavenges took milliseconds). As a class, every request shares one shape.
// The members are the ones deno_fetch reads and writes (method, headerList,
// body, urlList, urlListProcessed, url(), currentUrl(), redirect state).
// `headerText` is every header line as `name NUL value NUL` in one string
// (HTTP carries no NUL in either): the list of pairs deno_fetch wants is made
// only if the handler reads the headers.
class IncomingInnerRequest {
  constructor(method, url, headerText, body, protocol) {
    this.protocol = protocol;
    this.cfInner = null;
    this.methodInner = method;
    this.urlString = url;
    this.headerText = headerText;
    this.headerListInner = null;
    this.urlListInner = null;
    this.urlListProcessedInner = null;
    this.body = body;
    // As on workerd: a handler that passes its request on to fetch()
    // (`fetch(url, request)`) hands a redirect back to its client rather
    // than following it.
    this.redirectMode = "manual";
    this.redirectCount = 0;
    this.clientRid = null;
    this.blobUrlEntry = null;
  }
  get method() {
    return this.methodInner;
  }
  set method(value) {
    this.methodInner = value;
  }
  get headerList() {
    if (this.headerListInner === null) {
      const fields = StringPrototypeSplit(this.headerText, "\0");
      const list = [];
      // The terminator after the last value leaves one empty field over.
      for (let i = 0; i + 1 < fields.length; i += 2) {
        ArrayPrototypePush(list, [fields[i], fields[i + 1]]);
      }
      this.headerListInner = list;
      this.headerText = "";
    }
    return this.headerListInner;
  }
  set headerList(value) {
    this.headerListInner = value;
  }
  get urlList() {
    if (this.urlListInner === null) {
      const url = this.urlString;
      this.urlListInner = [() => url];
    }
    return this.urlListInner;
  }
  set urlList(value) {
    this.urlListInner = value;
  }
  get urlListProcessed() {
    if (this.urlListProcessedInner === null) {
      this.urlListProcessedInner = [this.urlString];
    }
    return this.urlListProcessedInner;
  }
  set urlListProcessed(value) {
    this.urlListProcessedInner = value;
  }
  url() {
    return this.urlString;
  }
  // `request.cf`: made when first read.
  cf() {
    if (this.cfInner === null) {
      this.cfInner = requestProperties(this);
    }
    return this.cfInner;
  }
  currentUrl() {
    if (this.urlListInner === null) {
      return this.urlString;
    }
    const list = this.urlList;
    const processed = this.urlListProcessed;
    const last = list.length - 1;
    if (processed[last] === undefined) {
      processed[last] = list[last]();
    }
    return processed[last];
  }
}

// `request.cf`: Workers gives every incoming request an object of what the
// edge knows about it. isopod fills in only what it knows truthfully, and
// leaves out what it cannot (a location, a TLS session, bot scores):
// - httpProtocol: the HTTP version the client spoke, "HTTP/1.1" or
//   "HTTP/1.0" (the host's protocol index, instance.rs's `protocol_index`);
// - clientAcceptEncoding: the Accept-Encoding the client sent, when it sent
//   one.
// A Request made by the handler has no `cf` (undefined), as on Workers.
const PROTOCOLS = ["HTTP/0.9", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"];
function requestProperties(inner) {
  const properties = { httpProtocol: PROTOCOLS[inner.protocol] ?? "HTTP/1.1" };
  const headerList = inner.headerList;
  for (let i = 0; i < headerList.length; i++) {
    const line = headerList[i];
    if (StringPrototypeToLowerCase(line[0]) === "accept-encoding") {
      properties.clientAcceptEncoding = line[1];
      break;
    }
  }
  return properties;
}
// A clone of an incoming request keeps its `cf` (deno's clone makes a plain
// inner request): clones are rare, so they are remembered here rather than
// on every request.
const clonedProperties = new SafeWeakMap();
function incomingProperties(req) {
  const inner = request.toInnerRequest(req);
  return ObjectPrototypeIsPrototypeOf(IncomingInnerRequest.prototype, inner)
    ? inner.cf()
    : clonedProperties.get(req);
}
ObjectDefineProperty(request.RequestPrototype, "cf", {
  get: ObjectGetOwnPropertyDescriptor({
    get cf() {
      webidl.assertBranded(this, request.RequestPrototype);
      return incomingProperties(this);
    },
  }, "cf").get,
  enumerable: true,
  configurable: true,
});
{
  const clone = request.RequestPrototype.clone;
  ObjectDefineProperty(request.RequestPrototype, "clone", {
    value: {
      clone() {
        const copy = FunctionPrototypeCall(clone, this);
        const properties = incomingProperties(this);
        if (properties !== undefined) {
          clonedProperties.set(copy, properties);
        }
        return copy;
      },
    }.clone,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

// Requests in flight on this isolate, for `abort()`: their contexts, in the
// first `inFlightCount` slots of a dense array (each context knows its index;
// removal moves the last one into the hole). Not a Map: a Map that churns
// rehashes into new tables, and V8 keeps each obsolete table (with its
// entries) linked to its successor for live iterators; the chain held every
// request's objects through scavenges (measured: 0.85 MB survived each one
// at 60k requests/s). Nor push and pop: popping the last element shrinks
// the array's store, and the next push grows it again, through the runtime,
// on every request of an isolate serving one at a time.
const inFlight = [];
let inFlightCount = 0;
function trackRequest(context) {
  context.inFlightIndex = inFlightCount;
  inFlight[inFlightCount++] = context;
}
function untrackRequest(context) {
  const index = context.inFlightIndex;
  if (index < 0) {
    return;
  }
  const last = inFlight[--inFlightCount];
  inFlight[inFlightCount] = undefined;
  if (last !== context) {
    inFlight[index] = last;
    last.inFlightIndex = index;
  }
  context.inFlightIndex = -1;
  // Later log records still name the request; nothing keeps it alive.
  context.req = null;
}

// The methods the host passes by index (instance.rs's
// `standard_method_index`, in this order); any other comes as a string.
const STANDARD_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

// One request, as JavaScript tracks it. A class, so that every request has
// the same shape (see "What a request must not leave behind" in
// ARCHITECTURE.md); the brand that `currentRequest` checks is on the
// prototype. `waitUntil` stays null until the handler registers work.
class RequestContext {
  constructor(id, method, url, req) {
    this.id = id;
    this.method = method;
    this.url = url;
    this.subrequests = 0;
    this.req = req;
    this.inFlightIndex = -1;
    this.waitUntil = null;
  }
}
RequestContext.prototype[kRequestContext] = true;

// How a handler's call settled.
const ANSWERED = 0;
const THREW = 1;

// Promise reactions for a handler's promise. They find their request in the
// async context, which V8 restores for a reaction to what it was when the
// reaction was registered (`dispatch` registers them inside the request's
// context): no closure is made per request.
function settleAnswered(res) {
  settle(core.getAsyncContext(), ANSWERED, res);
}
function settleThrew(error) {
  settle(core.getAsyncContext(), THREW, error);
}

function createDispatcher(handler, env) {
  function dispatch(id, methodOrIndex, requestUrl, headerText, bodyRid, protocol) {
    const method = typeof methodOrIndex === "number"
      ? STANDARD_METHODS[methodOrIndex]
      : methodOrIndex;
    const innerBody = bodyRid < 0
      ? null
      : new body.InnerBody(streams.readableStreamForRid(bodyRid));
    const inner = new IncomingInnerRequest(
      method,
      requestUrl,
      headerText,
      innerBody,
      protocol,
    );
    const req = request.fromInnerRequest(inner, "immutable");
    const context = new RequestContext(id, method, requestUrl, req);
    trackRequest(context);
    const previous = enterRequest(context);
    try {
      const result = handler(req, env, context);
      if (core.isPromise(result)) {
        PromisePrototypeThen(result, settleAnswered, settleThrew);
      } else {
        settle(context, ANSWERED, result);
      }
    } catch (error) {
      settle(context, THREW, error);
    } finally {
      core.setAsyncContext(previous);
    }
  }

  function abort(id) {
    let context;
    for (let i = 0; i < inFlightCount; i++) {
      if (inFlight[i].id === id) {
        context = inFlight[i];
        break;
      }
    }
    if (context === undefined) {
      return;
    }
    const previous = enterRequest(context);
    try {
      request.abortRequest(context.req);
    } finally {
      core.setAsyncContext(previous);
    }
  }

  return { dispatch, abort };
}

// Answers the request (`ANSWERED` with the handler's result, or `THREW`
// with its error) and ends it once its `waitUntil` work has settled. A
// serve-fast response with no `waitUntil` work ends it in the same op.
function settle(context, outcome, value) {
  const id = context.id;
  let ended = false;
  try {
    if (outcome === ANSWERED) {
      ended = respond(id, value, context.waitUntil === null) === true;
    } else {
      fail(id, FAIL_THREW, value);
    }
  } catch (error) {
    fail(id, FAIL_THREW, error);
  }
  untrackRequest(context);
  if (ended) {
    return;
  }
  const waitUntil = context.waitUntil;
  if (waitUntil === null) {
    op_isopod_done(id);
    return;
  }
  const previous = enterRequest(context);
  try {
    PromisePrototypeThen(
      SafePromiseAllSettled(waitUntil),
      () => op_isopod_done(id),
    );
  } finally {
    core.setAsyncContext(previous);
  }
}

function fail(id, kind, error) {
  op_isopod_fail(
    id,
    kind,
    typeof error === "string" ? error : describeError(error),
  );
}

// Answers request `id` with `res`; returns true when it also ended the
// request (only a serve-fast response given `last` does).
function respond(id, res, last) {
  if (!ObjectPrototypeIsPrototypeOf(response.ResponsePrototype, res)) {
    const what = res === null
      ? "null"
      : typeof res === "object"
      ? `an object (${res?.constructor?.name ?? "Object"})`
      : typeof res;
    fail(
      id,
      FAIL_NOT_A_RESPONSE,
      `the fetch handler returned ${what}, not a Response`,
    );
    return;
  }
  if (respondFast(id, res, last)) {
    return last;
  }
  const inner = response.toInnerResponse(res);
  let headerList = inner.headerList;
  const status = inner.status;
  if (status < 200) {
    // deno's Response allows 101 (for its WebSocket upgrade); isopod
    // upgrades nothing, and workerd refuses such a Response outright.
    fail(
      id,
      FAIL_NOT_A_RESPONSE,
      `the fetch handler returned a Response with status ${status}; responses must have a status from 200 to 599`,
    );
    return;
  }
  const innerBody = inner.body;
  const encoding = innerBody === null || manuallyEncoded.has(res)
    ? null
    : automaticEncoding(headerList);
  if (encoding !== null) {
    if (innerBody.unusable()) {
      throw new TypeError("the response body has already been used");
    }
    const compressed = PipeThrough(
      innerBody.stream,
      new compression.CompressionStream(encoding),
    );
    headerList = withoutContentLength(headerList);
    const rid = streams.resourceForReadableStream(compressed);
    op_isopod_respond_stream(id, status, headerList, rid);
    return;
  }
  if (innerBody === null) {
    op_isopod_respond(id, status, headerList, null);
    return;
  }
  if (innerBody.unusable()) {
    throw new TypeError("the response body has already been used");
  }
  const source = innerBody.streamOrStatic;
  if (!ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, source)) {
    // A static body: a string or bytes, sent in one op with no stream.
    source.consumed = true;
    op_isopod_respond(id, status, headerList, source.body);
    return;
  }
  const rid = streams.resourceForReadableStream(source, innerBody.length);
  op_isopod_respond_stream(id, status, headerList, rid);
}

// Workers' automatic Content-Encoding: a handler that labels its response
// `Content-Encoding: gzip` (or `br`) has its body compressed on the way out,
// unless the Response was made with `encodeBody: "manual"` (its body is
// already encoded). Any other encoding is sent as given. Only responses off
// the serve-fast path can carry the header, so a plain response pays nothing.
const manuallyEncoded = new SafeWeakSet();
const AUTOMATIC_ENCODINGS = { __proto__: null, gzip: "gzip", br: "brotli" };
function automaticEncoding(headerList) {
  for (let i = 0; i < headerList.length; i++) {
    const line = headerList[i];
    if (StringPrototypeToLowerCase(line[0]) === "content-encoding") {
      return AUTOMATIC_ENCODINGS[StringPrototypeToLowerCase(
        StringPrototypeTrim(line[1]),
      )] ?? null;
    }
  }
  return null;
}
function withoutContentLength(headerList) {
  const kept = [];
  for (let i = 0; i < headerList.length; i++) {
    if (StringPrototypeToLowerCase(headerList[i][0]) !== "content-length") {
      ArrayPrototypePush(kept, headerList[i]);
    }
  }
  return kept;
}
const PipeThrough = (stream, transform) =>
  FunctionPrototypeCall(
    streams.ReadableStreamPrototype.pipeThrough,
    stream,
    transform,
  );

// deno_fetch records, when a `Response` is constructed from a string or
// bytes with status 200 and at most a content type, the fields deno's own
// server answers from without a header list or a body stream ("serve fast"):
// one op sends it. Returns false when the response is not of that kind, or
// its body was already sent this way (the full path then finds it used).
const {
  serveFastStatusKey,
  serveFastBodyKey,
  serveFastHeaderKindKey,
  serveFastContentTypeKey,
  serveFastConsumedKey,
  SERVE_FAST_HEADER_DEFAULT_TEXT,
  SERVE_FAST_HEADER_CONTENT_TYPE,
} = response;
function respondFast(id, res, last) {
  const status = res[serveFastStatusKey];
  if (status === 0 || status === undefined || res[serveFastConsumedKey]) {
    return false;
  }
  const headerKind = res[serveFastHeaderKindKey];
  const contentType = headerKind === SERVE_FAST_HEADER_DEFAULT_TEXT
    ? "text/plain;charset=UTF-8"
    : headerKind === SERVE_FAST_HEADER_CONTENT_TYPE
    ? res[serveFastContentTypeKey]
    : "";
  const source = res[serveFastBodyKey];
  res[serveFastConsumedKey] = true;
  const staticBody = response.getInnerResponse(res).body?.streamOrStatic;
  if (staticBody?.consumed === false) {
    staticBody.consumed = true;
  }
  const ends = last ? 1 : 0;
  if (typeof source === "string") {
    op_isopod_respond_text(id, status, contentType, source, ends);
  } else {
    op_isopod_respond_bytes(id, status, contentType, source, ends);
  }
  return true;
}

// Module handlers get (request, env, ctx); service-worker listeners get a
// FetchEvent. Both are normalised to (request, env, RequestContext) ->
// result.
function moduleHandler(exported) {
  const target = exported;
  return (req, env, context) =>
    target.fetch(req, env, new ExecutionContext(context));
}

function serviceWorkerHandler() {
  return (req, _env, context) => {
    const ctx = new ExecutionContext(context);
    const fetchEvent = new FetchEvent("fetch", { request: req }, ctx);
    event.setIsTrusted(fetchEvent, true);
    for (let i = 0; i < fetchListeners.length; i++) {
      FunctionPrototypeCall(fetchListeners[i], globalThis, fetchEvent);
      if (fetchEvent[kRespond] !== undefined) {
        return fetchEvent[kRespond];
      }
    }
    throw new TypeError("no fetch listener called respondWith()");
  };
}

// Called by the runtime right after the bundle is evaluated, once per
// isolate. `exported` is the module's default export, or undefined for a
// service-worker script; `limits` holds the budgets enforced in JavaScript;
// `bindings` lists the app's storage bindings as [name, kind, index], each
// put on `env` (and, for a service-worker script, on the global object, as
// Workers does).
function init(exported, env, limits, bindings) {
  subrequestLimit = limits.subrequests;
  for (let i = 0; i < bindings.length; i++) {
    const { 0: name, 1: kind, 2: index } = bindings[i];
    const binding = kind === "kv" ? kvBinding(index) : d1Binding(index);
    ObjectDefineProperty(env, name, enumerable(binding));
    if (exported === undefined || exported === null) {
      ObjectDefineProperty(globalThis, name, nonEnumerable(binding));
    }
  }
  let handler;
  if (exported !== undefined && exported !== null) {
    if (typeof exported.fetch !== "function") {
      throw new TypeError(
        "the bundle's default export has no fetch(request, env, ctx) method",
      );
    }
    handler = moduleHandler(exported);
  } else if (fetchListeners.length > 0) {
    handler = serviceWorkerHandler();
  } else {
    throw new TypeError(
      "the bundle neither exports default { fetch } nor adds a 'fetch' event listener",
    );
  }
  return createDispatcher(handler, env);
}

// Everything the runtime needs, reachable once: `__isopodInit` is deleted by
// the runtime before the tenant's bundle is evaluated, and the returned
// functions are kept only on the Rust side.
ObjectDefineProperty(globalThis, "__isopodInit", {
  value: () => {
    hideBootstrap();
    takeFastOps();
    startClock();
    return init;
  },
  configurable: true,
  enumerable: false,
  writable: false,
});

// The same, for the isolate that makes a version's snapshot: no clock and
// no fast ops (neither can be serialised; `__isopodResume` adds both in each
// instance started from the snapshot), and taints recorded from here until
// `end` is called after the bundle's top-level code. `end` takes what the
// instances will need (the module's default export) and leaves
// `__isopodResume` as the only handle on the global object.
ObjectDefineProperty(globalThis, "__isopodInitForSnapshot", {
  value: (shareRandom) => {
    // deno_core finds its ops through these when it starts an isolate from
    // the snapshot: hidden from tenant code while it runs, put back for the
    // snapshot, hidden again by `__isopodResume`.
    const denoGlobal = ObjectGetOwnPropertyDescriptor(globalThis, "Deno");
    const bootstrapGlobal = ObjectGetOwnPropertyDescriptor(globalThis, "__bootstrap");
    hideBootstrap();
    snapshotTaints = [];
    const restore = watchForTaints(shareRandom);
    const end = (exported) => {
      restore();
      const taints = snapshotTaints;
      snapshotTaints = null;
      if (denoGlobal !== undefined) {
        ObjectDefineProperty(globalThis, "Deno", denoGlobal);
      }
      if (bootstrapGlobal !== undefined) {
        ObjectDefineProperty(globalThis, "__bootstrap", bootstrapGlobal);
      }
      ObjectDefineProperty(globalThis, "__isopodResume", {
        value: () => {
          delete globalThis.__isopodResume;
          hideBootstrap();
          takeFastOps();
          startClock();
          return [init, exported];
        },
        configurable: true,
        enumerable: false,
        writable: false,
      });
      return taints;
    };
    return end;
  },
  configurable: true,
  enumerable: false,
  writable: false,
});

function hideBootstrap() {
  delete globalThis.__isopodInit;
  delete globalThis.__isopodInitForSnapshot;
  removeSharedMemory();
  makeGlobalAServiceWorkerScope();
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
}

// Per isolate, never in a snapshot: this isolate's clock buffer, which the
// host rewrites at every window entry, and performance.timeOrigin, this
// isolate's birth.
function startClock() {
  const clockBuffer = new ArrayBuffer(16);
  op_isopod_clock(clockBuffer);
  clock = new Float64Array(clockBuffer);
  monotonicOrigin = clock[1];
  performance.setTimeOrigin();
}

// Wraps, for the snapshot's top-level run only, every source of randomness
// and every API whose result lives outside the heap, so that a call records
// a taint; returns the function that puts the originals back.
function watchForTaints(shareRandom) {
  const saved = [];
  // `instead`, when given, runs in place of the original (for calls whose
  // effect must not happen in the snapshotting process at all).
  const watch = (object, key, what, instead = undefined) => {
    const descriptor = ObjectGetOwnPropertyDescriptor(object, key);
    if (descriptor === undefined || typeof descriptor.value !== "function") {
      return;
    }
    const original = instead ?? descriptor.value;
    ArrayPrototypePush(saved, [object, key, descriptor]);
    const watched = function (...args) {
      taint(what);
      return new.target === undefined
        ? ReflectApply(original, this, args)
        : ReflectConstruct(original, args, new.target === watched ? original : new.target);
    };
    ObjectDefineProperty(object, key, { ...descriptor, value: watched });
  };
  const restoreWasm = watchWebAssembly();
  if (!shareRandom) {
    watch(globalThis.Math, "random", "Math.random()");
  }
  // Nothing leaves the snapshotting process: a top-level fetch never
  // settles, and its version is loaded from source.
  watch(globalThis, "fetch", "fetch()", () => new Promise(() => {}));
  // V8 cannot serialise a FinalizationRegistry with work pending. (A
  // Blob's, deno's own, is caught where its bytes go: the snapshotting
  // isolate's blob store, isopod_api's WatchedBlobStore.)
  watch(globalThis, "FinalizationRegistry", "a FinalizationRegistry");
  // WebCrypto's objects are host (cppgc) objects, which cannot be made in
  // a snapshotting isolate. Reading `crypto` there (libraries keep it at
  // top level) gives a stand-in, which stays in the snapshot: in each
  // instance its members call the instance's own `crypto`. Calling them
  // during the snapshot's run is a taint (randomness, or work that would
  // not settle), answered with placeholders never used: the version is then
  // loaded from source.
  const cryptoGlobal = ObjectGetOwnPropertyDescriptor(globalThis, "crypto");
  ArrayPrototypePush(saved, [globalThis, "crypto", cryptoGlobal]);
  ObjectDefineProperty(globalThis, "crypto", {
    ...cryptoGlobal,
    get: () => cryptoStandIn,
  });
  return () => {
    for (let i = saved.length - 1; i >= 0; i--) {
      const { 0: object, 1: key, 2: descriptor } = saved[i];
      ObjectDefineProperty(object, key, descriptor);
    }
    restoreWasm();
  };
}

// Stand-ins for `crypto` and `crypto.subtle` in a version's snapshot (see
// `watchForTaints`): plain objects with WebCrypto's prototypes, whose members
// call the isolate's own objects once the snapshot's run is over.
const subtleStandIn = { __proto__: crypto.SubtleCrypto.prototype };
for (const key of ObjectGetOwnPropertyNames(crypto.SubtleCrypto.prototype)) {
  const member = ObjectGetOwnPropertyDescriptor(crypto.SubtleCrypto.prototype, key);
  if (key === "constructor" || typeof member.value !== "function") {
    continue;
  }
  ObjectDefineProperty(subtleStandIn, key, nonEnumerable({
    [key](...args) {
      if (snapshotTaints !== null) {
        taint("crypto.subtle");
        return new Promise(() => {});
      }
      const subtle = crypto.crypto.subtle;
      return ReflectApply(subtle[key], subtle, args);
    },
  }[key]));
}
const cryptoStandIn = {
  __proto__: crypto.Crypto.prototype,
  getRandomValues(array) {
    if (snapshotTaints !== null) {
      taint("crypto.getRandomValues()");
      return array;
    }
    return crypto.crypto.getRandomValues(array);
  },
  randomUUID() {
    if (snapshotTaints !== null) {
      taint("crypto.randomUUID()");
      return "00000000-0000-4000-8000-000000000000";
    }
    return crypto.crypto.randomUUID();
  },
  get subtle() {
    return subtleStandIn;
  },
};

function watchWebAssembly() {
  // V8 has no WebAssembly in a snapshotting isolate; reading it there,
  // even to test whether it exists, would bake the wrong answer in.
  const wasm = ObjectGetOwnPropertyDescriptor(globalThis, "WebAssembly");
  ObjectDefineProperty(globalThis, "WebAssembly", {
    get() {
      taint("WebAssembly");
      return wasm?.value;
    },
    configurable: true,
    enumerable: false,
  });
  return () => {
    if (wasm === undefined) {
      delete globalThis.WebAssembly;
    } else {
      ObjectDefineProperty(globalThis, "WebAssembly", wasm);
    }
  };
}
