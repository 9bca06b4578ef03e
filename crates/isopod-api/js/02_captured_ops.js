// Lazily loaded scripts, deno's included, take their ops from the
// `__bootstrap` they are called with: deno_core's copy of `core.ops`, taken
// when core was set up, not `core.ops` itself. This hands the bootstrap that
// copy, so it can replace an op for the deno scripts it loads afterwards.
(function () {
  return { ops: __bootstrap.core.ops };
})();
