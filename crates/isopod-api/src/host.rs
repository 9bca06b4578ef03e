//! The host interface: the ops through which the bootstrap hands log records,
//! responses and request completion to whoever drives the isolate.
//!
//! The ops find the host as an `Rc<dyn Host>` in `OpState`. Every op here is
//! synchronous and only records or forwards; none of them runs JavaScript,
//! so a host may not call back into the isolate from these methods.

use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, ByteString, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;

/// Severity of a console record (`console.debug` … `console.error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `console.debug`
    Debug,
    /// `console.log`, `console.info`
    Info,
    /// `console.warn`
    Warn,
    /// `console.error`
    Error,
}

impl LogLevel {
    fn from_console_level(level: u32) -> Self {
        match level {
            0 => LogLevel::Debug,
            2 => LogLevel::Warn,
            3 => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// Why a request produced no response of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler threw, or its promise rejected.
    Threw,
    /// The handler settled with something other than a `Response`.
    NotAResponse,
}

/// What escaped the tenant's code without being caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UncaughtKind {
    /// A rejected promise nobody handled.
    Rejection,
    /// An exception thrown by a timer or microtask callback.
    Exception,
}

/// A response as the handler produced it.
pub struct HostResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header lines in order, names lower-cased by `Headers`; repeated names
    /// (such as `set-cookie`) stay separate entries.
    pub headers: Vec<(ByteString, ByteString)>,
    /// The body.
    pub body: ResponseBody,
}

/// A response body as the handler produced it.
pub enum ResponseBody {
    /// `null` body.
    Empty,
    /// A body known in full when the response was returned.
    Bytes(Bytes),
    /// A `ReadableStream` body, exposed as a readable resource; reading it
    /// needs the isolate's event loop to keep being polled.
    Stream(Rc<dyn Resource>),
}

/// The receiver of the bootstrap's calls for one isolate.
///
/// Request ids are the ones the host passed to the JavaScript dispatcher; id
/// `0` never names a request (it is how code outside any request logs).
pub trait Host {
    /// A console record, made while serving `request` (`METHOD /path`), or
    /// outside any request when `request` is empty.
    fn log(&self, level: LogLevel, request: &str, message: &str);
    /// The handler's response for `request`.
    fn respond(&self, request: u32, response: HostResponse);
    /// The handler failed to produce a response for `request`.
    fn fail(&self, request: u32, kind: FailureKind, detail: String);
    /// `request` is complete: responded or failed, and every `waitUntil`
    /// promise it registered has settled.
    fn done(&self, request: u32);
    /// A promise rejection that nothing handled, or an exception thrown by
    /// a callback (timer, microtask) with nobody to catch it, caused while
    /// serving `request` (empty when outside any request).
    fn uncaught(&self, request: &str, kind: UncaughtKind, detail: String);
    /// The tokio runtime whose blocking pool runs this isolate's
    /// `crypto.subtle` work (deno_crypto spawns it with `spawn_blocking`).
    /// The host gives each isolate its own, to bound that work and to
    /// charge its CPU to the isolate's requests.
    fn crypto_runtime(&self) -> std::io::Result<tokio::runtime::Handle>;
}

pub(crate) fn host(state: &OpState) -> Rc<dyn Host> {
    state.borrow::<Rc<dyn Host>>().clone()
}

#[op2(fast)]
pub fn op_isopod_log(
    state: &mut OpState,
    #[smi] level: u32,
    #[smi] _request: u32,
    #[string] label: &str,
    #[string] message: &str,
) {
    host(state).log(LogLevel::from_console_level(level), label, message);
}

#[op2]
pub fn op_isopod_respond(
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[buffer] body: Option<JsBuffer>,
) {
    let body = match body {
        None => ResponseBody::Empty,
        Some(bytes) => ResponseBody::Bytes(Bytes::copy_from_slice(&bytes)),
    };
    host(state).respond(
        request,
        HostResponse {
            status: status as u16,
            headers,
            body,
        },
    );
}

#[op2]
pub fn op_isopod_respond_stream(
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
    let stream = state
        .resource_table
        .take_any(rid)
        .map_err(JsErrorBox::from_err)?;
    host(state).respond(
        request,
        HostResponse {
            status: status as u16,
            headers,
            body: ResponseBody::Stream(stream),
        },
    );
    Ok(())
}

#[op2(fast)]
pub fn op_isopod_fail(
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] kind: u32,
    #[string] detail: String,
) {
    let kind = if kind == 1 {
        FailureKind::NotAResponse
    } else {
        FailureKind::Threw
    };
    host(state).fail(request, kind, detail);
}

#[op2(fast)]
pub fn op_isopod_done(state: &mut OpState, #[smi] request: u32) {
    host(state).done(request);
}

#[op2(fast)]
pub fn op_isopod_uncaught(
    state: &mut OpState,
    #[smi] _request: u32,
    #[string] label: &str,
    #[smi] kind: u32,
    #[string] detail: String,
) {
    let kind = if kind == 1 {
        UncaughtKind::Exception
    } else {
        UncaughtKind::Rejection
    };
    host(state).uncaught(label, kind, detail);
}
