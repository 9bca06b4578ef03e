//! Where `crypto.subtle`'s work runs.
//!
//! deno_crypto hands most operations to `spawn_blocking`, which spawns onto
//! the blocking pool of the tokio runtime current on the calling thread.
//! The bootstrap calls every `SubtleCrypto` method through
//! [`op_isopod_in_crypto_pool`], which makes the host's crypto runtime
//! ([`Host::crypto_runtime`](crate::Host::crypto_runtime)) the current one for the length of the call.
//! That is enough because deno polls an async op once when it is called and
//! every crypto op spawns its blocking task before its first `await`; the
//! task's completion then wakes the isolate's own event loop as before.
//!
//! Invariants:
//! - The call is synchronous and the runtime context is restored when it
//!   returns (or throws), so nothing but the `SubtleCrypto` method's own
//!   first step runs with the crypto runtime current.
//! - Nothing that must be driven is spawned onto that runtime (its
//!   scheduler never runs). deno's op driver spawns its polling task onto
//!   the current runtime the first time an async op of the isolate is
//!   pending, so the bootstrap makes one pending, outside this op, before
//!   the isolate's first crypto call.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, v8, OpState};

/// Calls `operation` (a closure that calls one `SubtleCrypto` method) with
/// the host's crypto runtime current, and returns what it returns: the
/// method's promise.
#[op2(reentrant)]
pub(crate) fn op_isopod_in_crypto_pool<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: Rc<RefCell<OpState>>,
    operation: v8::Local<'s, v8::Function>,
) -> Result<Option<v8::Local<'s, v8::Value>>, deno_error::JsErrorBox> {
    // The borrow ends before the call: the method's own ops borrow the
    // state too.
    let host = crate::host::host(&state.borrow());
    let runtime = host.crypto_runtime().map_err(|error| {
        deno_error::JsErrorBox::new(
            "DOMExceptionOperationError",
            format!("no thread for the crypto operation: {error}"),
        )
    })?;
    let _current = runtime.enter();
    let this = v8::undefined(scope).into();
    Ok(operation.call(scope, this, &[]))
}

/// Pays WebCrypto's one-time process set-up before any tenant code runs:
/// the first use of aws-lc's random generator in a process (its seeding)
/// costs about 40 ms of CPU, which would otherwise be charged to the first
/// request that generates a key — most of its default 50 ms budget, and past
/// it on a busy machine. Later uses, on any thread, cost microseconds.
pub fn warm_up_crypto() {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    // A generator that fails here fails each later key generation too,
    // with an error the handler sees.
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut seed);
}
