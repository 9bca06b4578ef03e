// Loaded once per isolate, at run time, never into the snapshot; it does
// nothing itself. V8 cannot serialise an op's fast-call overload, so every
// op function in the snapshot is the slow kind, and so is every op the
// bootstrap captured when the snapshot was made. deno_core attaches the fast
// overloads to `core.ops` at the first run-time load of a lazily loaded
// script: loading this one is what makes it happen (10_global_scope.js's
// `takeFastOps` then takes the hot path's ops from `core.ops` again).
undefined;
