//! The host interface: the ops through which the bootstrap hands log records,
//! responses and request completion to whoever drives the isolate.
//!
//! The ops find the host as an `Rc<dyn Host>` in `OpState`. Every op here is
//! synchronous and only records or forwards; none of them runs JavaScript,
//! so a host may not call back into the isolate from these methods.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, v8, OpState, Resource, ResourceId};
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

/// How an outbound `fetch` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A response came back (whatever its status).
    Response,
    /// It failed: a network error, an abort, a bad request.
    Failed,
    /// The app's network policy refused it.
    Refused,
}

/// Outbound fetches of one app by outcome, counted by its instances for
/// the host's metrics.
#[derive(Debug, Default)]
pub struct FetchCounts {
    /// Fetches that got a response.
    pub responses: std::sync::atomic::AtomicU64,
    /// Fetches that failed.
    pub failed: std::sync::atomic::AtomicU64,
    /// Fetches the network policy refused.
    pub refused: std::sync::atomic::AtomicU64,
}

impl FetchCounts {
    /// Counts one fetch.
    pub fn count(&self, outcome: FetchOutcome) {
        let counter = match outcome {
            FetchOutcome::Response => &self.responses,
            FetchOutcome::Failed => &self.failed,
            FetchOutcome::Refused => &self.refused,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response as the handler produced it.
pub struct HostResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header lines in order, names lower-cased by `Headers`; repeated names
    /// (such as `set-cookie`) stay separate entries. Lines that are not valid
    /// HTTP were dropped (and counted in `invalid_headers`).
    pub headers: http::HeaderMap,
    /// Header lines dropped because HTTP cannot carry them.
    pub invalid_headers: usize,
    /// The body.
    pub body: HandlerBody,
}

/// A response body as the handler produced it.
pub enum HandlerBody {
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
    /// A console record, made while serving `request` (labelled `METHOD
    /// /path`), or outside any request when `request` is 0 (`label` empty).
    fn log(&self, level: LogLevel, request: u32, label: &str, message: &str);
    /// The handler's response for `request`.
    fn respond(&self, request: u32, response: HostResponse);
    /// The handler failed to produce a response for `request`.
    fn fail(&self, request: u32, kind: FailureKind, detail: String);
    /// `request` is complete: responded or failed, and every `waitUntil`
    /// promise it registered has settled.
    fn done(&self, request: u32);
    /// A promise rejection that nothing handled, or an exception thrown by
    /// a callback (timer, microtask) with nobody to catch it, caused while
    /// serving `request` (`request` and `label` as for [`Host::log`]).
    fn uncaught(&self, request: u32, label: &str, kind: UncaughtKind, detail: String);
    /// An outbound `fetch` ended.
    fn fetched(&self, _outcome: FetchOutcome) {}
    /// The tokio runtime whose blocking pool runs this isolate's
    /// `crypto.subtle` work (deno_crypto spawns it with `spawn_blocking`).
    /// The host gives each isolate its own, to bound that work and to
    /// charge its CPU to the isolate's requests.
    fn crypto_runtime(&self) -> std::io::Result<tokio::runtime::Handle>;
    /// An empty map for a response's headers (the host may hand back one
    /// it recycled, saving the allocations of a fresh one).
    fn header_map(&self) -> http::HeaderMap {
        http::HeaderMap::new()
    }
}

pub(crate) fn host(state: &OpState) -> Rc<dyn Host> {
    state.borrow::<Rc<dyn Host>>().clone()
}

#[op2(fast)]
pub(crate) fn op_isopod_log(
    state: &mut OpState,
    #[smi] level: u32,
    #[smi] request: u32,
    #[string] label: &str,
    #[string] message: &str,
) {
    host(state).log(LogLevel::from_console_level(level), request, label, message);
}

/// The handler's response, with its header list (deno_fetch's `[name,
/// value]` pairs) and a body that is `null`, a string or bytes.
#[op2(fast)]
pub(crate) fn op_isopod_respond<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    header_list: v8::Local<'s, v8::Array>,
    body: v8::Local<'s, v8::Value>,
) {
    let host = host(state);
    let (headers, invalid_headers) = read_header_list(scope, host.header_map(), header_list);
    let body = if body.is_null_or_undefined() {
        HandlerBody::Empty
    } else if let Ok(text) = v8::Local::<v8::String>::try_from(body) {
        HandlerBody::Bytes(utf8_bytes(scope, text))
    } else if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(body) {
        let mut bytes = vec![0; view.byte_length()];
        let copied = view.copy_contents(&mut bytes);
        bytes.truncate(copied);
        HandlerBody::Bytes(Bytes::from(bytes))
    } else {
        HandlerBody::Empty
    };
    deliver(&*host, request, status, (headers, invalid_headers), body);
}

/// The response of `new Response(text)`, `Response.json(...)` and the like:
/// status, a content type (empty for none) and a body known in full, as
/// deno_fetch records them when the `Response` is constructed. One fast
/// call, with no header list and no `Uint8Array` made for the text.
///
/// The content type comes as its Latin-1 bytes (a `ByteString`, as the
/// header-list path sends it), the body as the string itself: V8 gives a
/// fast call only flat one-byte strings, and a template literal's result is
/// a rope, which would send the whole call down the slow path's
/// conversions. [`utf8_bytes`] reads either kind in place.
///
/// `last` is 1 when the request registered no `waitUntil` work: the call
/// then also ends the request, as `op_isopod_done` would, in the same call.
#[op2(fast)]
pub(crate) fn op_isopod_respond_text<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    #[string(onebyte)] content_type: Cow<'_, [u8]>,
    body: v8::Local<'s, v8::String>,
    #[smi] last: u32,
) {
    let body = utf8_bytes(scope, body);
    deliver_static(state, request, status, &content_type, body, last != 0);
}

/// Like `op_isopod_respond_text`, for a body given as bytes.
#[op2(fast)]
pub(crate) fn op_isopod_respond_bytes(
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    #[string(onebyte)] content_type: Cow<'_, [u8]>,
    #[buffer] body: &[u8],
    #[smi] last: u32,
) {
    deliver_static(
        state,
        request,
        status,
        &content_type,
        Bytes::copy_from_slice(body),
        last != 0,
    );
}

/// Hands a serve-fast response to the host: a body known in full, and a
/// content type (its Latin-1 bytes; empty for none) as its only header;
/// then ends the request if this was `last` of it.
fn deliver_static(
    state: &OpState,
    request: u32,
    status: u32,
    content_type: &[u8],
    body: Bytes,
    last: bool,
) {
    // One lookup of the host in the op state for the three calls.
    let host = host(state);
    let headers = content_type_header(host.header_map(), content_type);
    deliver(&*host, request, status, headers, HandlerBody::Bytes(body));
    if last {
        host.done(request);
    }
}

/// The headers of a serve-fast response, in the empty map `headers`: its
/// content type, if not empty, with the count of lines dropped as invalid.
fn content_type_header(
    mut headers: http::HeaderMap,
    content_type: &[u8],
) -> (http::HeaderMap, usize) {
    if content_type.is_empty() {
        return (headers, 0);
    }
    let value = match KNOWN_CONTENT_TYPES
        .iter()
        .find(|known| known.as_bytes() == content_type)
    {
        Some(known) => Ok(known.clone()),
        None => http::HeaderValue::from_bytes(content_type),
    };
    match value {
        Ok(value) => {
            headers.insert(http::header::CONTENT_TYPE, value);
            (headers, 0)
        }
        Err(_) => (headers, 1),
    }
}

/// A string's UTF-8 encoding, read in place (V8 flattens a rope first):
/// ASCII, the usual case, is copied once; a lone surrogate becomes U+FFFD,
/// as the encoding of a body string does everywhere.
fn utf8_bytes<'s>(scope: &mut v8::PinScope<'s, '_>, text: v8::Local<'s, v8::String>) -> Bytes {
    let view = v8::ValueView::new(scope, text);
    match view.data() {
        v8::ValueViewData::OneByte(latin1) if latin1.is_ascii() => Bytes::copy_from_slice(latin1),
        v8::ValueViewData::OneByte(latin1) => Bytes::from(
            latin1
                .iter()
                .map(|&byte| char::from(byte))
                .collect::<String>(),
        ),
        v8::ValueViewData::TwoByte(utf16) => Bytes::from(String::from_utf16_lossy(utf16)),
    }
}

/// deno_fetch's serve-fast content types (a handful of literals) and the
/// few more handlers mostly set: made and checked at compile time, so they
/// cost no allocation and no validation per response.
static KNOWN_CONTENT_TYPES: [http::HeaderValue; 5] = [
    http::HeaderValue::from_static("text/plain;charset=UTF-8"),
    http::HeaderValue::from_static("application/json"),
    http::HeaderValue::from_static("text/plain; charset=utf-8"),
    http::HeaderValue::from_static("text/html; charset=utf-8"),
    http::HeaderValue::from_static("application/json; charset=utf-8"),
];

/// Hands a response, its headers already read (with the count of lines
/// dropped), to the host.
fn deliver(
    host: &dyn Host,
    request: u32,
    status: u32,
    (headers, invalid_headers): (http::HeaderMap, usize),
    body: HandlerBody,
) {
    host.respond(
        request,
        HostResponse {
            status: status as u16,
            headers,
            invalid_headers,
            body,
        },
    );
}

/// Reads deno_fetch's header list, `[[name, value], ...]` of byte strings,
/// straight into the empty map `headers` (no intermediate strings for
/// one-byte ones).
fn read_header_list<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    mut headers: http::HeaderMap,
    list: v8::Local<'s, v8::Array>,
) -> (http::HeaderMap, usize) {
    let lines = list.length();
    headers.reserve(lines as usize);
    let mut invalid = 0;
    for index in 0..lines {
        let line = list
            .get_index(scope, index)
            .and_then(|line| v8::Local::<v8::Array>::try_from(line).ok());
        let pair = line.and_then(|line| {
            let name = line.get_index(scope, 0)?.to_string(scope)?;
            let value = line.get_index(scope, 1)?.to_string(scope)?;
            let name = with_latin1(scope, name, |bytes| {
                http::HeaderName::from_bytes(bytes).ok()
            })?;
            let value = with_latin1(scope, value, |bytes| {
                http::HeaderValue::from_bytes(bytes).ok()
            })?;
            Some((name, value))
        });
        match pair {
            Some((name, value)) => {
                headers.append(name, value);
            }
            None => invalid += 1,
        }
    }
    (headers, invalid)
}

/// Calls `read` with the Latin-1 bytes of `string` (a `ByteString`, as
/// `Headers` keeps them), or gives `None` for a string with wider characters.
/// V8 may keep a string of Latin-1 characters in two-byte form (a slice of a
/// wider one, say): that one is narrowed into a copy.
fn with_latin1<'s, T>(
    scope: &mut v8::PinScope<'s, '_>,
    string: v8::Local<'s, v8::String>,
    read: impl FnOnce(&[u8]) -> Option<T>,
) -> Option<T> {
    let view = v8::ValueView::new(scope, string);
    match view.data() {
        v8::ValueViewData::OneByte(bytes) => read(bytes),
        v8::ValueViewData::TwoByte(wide) => {
            let narrow: Option<Vec<u8>> =
                wide.iter().map(|&unit| u8::try_from(unit).ok()).collect();
            read(&narrow?)
        }
    }
}

/// The handler's response with a streamed body: the readable resource `rid`
/// that the host pumps to the client at its pace.
#[op2(fast)]
pub(crate) fn op_isopod_respond_stream<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] request: u32,
    #[smi] status: u32,
    header_list: v8::Local<'s, v8::Array>,
    #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
    let stream = state
        .resource_table
        .take_any(rid)
        .map_err(JsErrorBox::from_err)?;
    let host = host(state);
    let headers = read_header_list(scope, host.header_map(), header_list);
    deliver(
        &*host,
        request,
        status,
        headers,
        HandlerBody::Stream(stream),
    );
    Ok(())
}

#[op2(fast)]
pub(crate) fn op_isopod_fail(
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
pub(crate) fn op_isopod_done(state: &mut OpState, #[smi] request: u32) {
    host(state).done(request);
}

#[op2(fast)]
pub(crate) fn op_isopod_fetched(state: &mut OpState, #[smi] outcome: u32) {
    let outcome = match outcome {
        0 => FetchOutcome::Response,
        2 => FetchOutcome::Refused,
        _ => FetchOutcome::Failed,
    };
    host(state).fetched(outcome);
}

#[op2(fast)]
pub(crate) fn op_isopod_uncaught(
    state: &mut OpState,
    #[smi] request: u32,
    #[string] label: &str,
    #[smi] kind: u32,
    #[string] detail: String,
) {
    let kind = if kind == 1 {
        UncaughtKind::Exception
    } else {
        UncaughtKind::Rejection
    };
    host(state).uncaught(request, label, kind, detail);
}
