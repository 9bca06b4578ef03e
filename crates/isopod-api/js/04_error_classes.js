// The JavaScript class of every error an op can raise.
//
// An op error carries a class name (deno_error's `JsErrorClass`), and
// deno_core builds the exception from the builder registered under that
// name; a name with no builder reaches JavaScript as a plain TypeError. So
// every name the linked deno crates can raise has a builder here, taken from
// the two complete tables those names come from, not added one at a time:
//
// - `DOMException<Name>`, for each name of WebIDL's error names table: a
//   `DOMException` with that name (WebCrypto's InvalidAccessError,
//   OperationError, DataError..., base64's InvalidCharacterError, streams'
//   and encoding's errors).
// - deno's own error classes (the ones deno puts on `Deno.errors`, for I/O
//   and resource errors): an `Error` subclass whose `name` is the class, as
//   deno gives it. isopod has no `Deno` namespace, so the classes are not
//   reachable by name; `e.name` and `instanceof Error` are as on deno.
//
// Invariants: runs once, at snapshot time, after deno_core registered its
// own (Error, TypeError, RangeError, ReferenceError, SyntaxError, URIError,
// BadResource, Interrupted, NotCapable). The hygiene test
// `every_op_error_class_has_a_builder` checks these tables against the class
// names in the deno crates' sources.

// WebIDL's error names table (https://webidl.spec.whatwg.org/#idl-DOMException-error-names),
// every entry, deprecated ones included.
export const DOM_EXCEPTION_NAMES = [
  "IndexSizeError",
  "HierarchyRequestError",
  "WrongDocumentError",
  "InvalidCharacterError",
  "NoModificationAllowedError",
  "NotFoundError",
  "NotSupportedError",
  "InUseAttributeError",
  "InvalidStateError",
  "SyntaxError",
  "InvalidModificationError",
  "NamespaceError",
  "InvalidAccessError",
  "TypeMismatchError",
  "SecurityError",
  "NetworkError",
  "AbortError",
  "URLMismatchError",
  "QuotaExceededError",
  "TimeoutError",
  "InvalidNodeTypeError",
  "DataCloneError",
  "EncodingError",
  "NotReadableError",
  "UnknownError",
  "ConstraintError",
  "DataError",
  "TransactionInactiveError",
  "ReadOnlyError",
  "VersionError",
  "OperationError",
  "NotAllowedError",
  "OptOutError",
];

// deno's error classes (runtime/js/01_errors.js's `Deno.errors`) that
// deno_core does not register itself.
export const DENO_ERROR_NAMES = [
  "NotFound",
  "PermissionDenied",
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "NotConnected",
  "AddrInUse",
  "AddrNotAvailable",
  "BrokenPipe",
  "AlreadyExists",
  "InvalidData",
  "TimedOut",
  "WriteZero",
  "WouldBlock",
  "UnexpectedEof",
  "Http",
  "Busy",
  "NotSupported",
  "FilesystemLoop",
  "IsADirectory",
  "NetworkUnreachable",
  "NotADirectory",
];

// `domException` is deno_web's 01_dom_exception.js: a name that WebIDL now
// gives an interface of its own (QuotaExceededError) is built as that class.
export function registerErrorClasses(core, domException) {
  const { DOMException } = domException;
  for (let i = 0; i < DOM_EXCEPTION_NAMES.length; i++) {
    const name = DOM_EXCEPTION_NAMES[i];
    const subclass = domException[name];
    core.registerErrorBuilder(
      `DOMException${name}`,
      subclass === undefined
        ? (message) => new DOMException(message, name)
        : (message) => new subclass(message),
    );
  }
  for (let i = 0; i < DENO_ERROR_NAMES.length; i++) {
    const name = DENO_ERROR_NAMES[i];
    // A class per name, as deno has: its own prototype (so the fast-call
    // error path, which re-parents a plain Error, finds it) and its name.
    const errorClass = {
      [name]: class extends Error {
        constructor(message, options) {
          super(message, options);
          this.name = name;
        }
      },
    }[name];
    core.registerErrorClass(name, errorClass);
  }
}
