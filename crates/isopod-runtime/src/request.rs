//! What crosses between the HTTP layer and an instance: an incoming request,
//! and the outcome of dispatching it.

use http::{HeaderMap, HeaderName, Method};

use crate::body::{RequestBody, ResponseBody};

/// A request on its way into an isolate. The HTTP layer has already made the
/// URL absolute and removed hop-by-hop headers.
pub struct IncomingRequest {
    /// The method.
    pub method: Method,
    /// The HTTP version the client spoke (`request.cf.httpProtocol`).
    pub version: http::Version,
    /// The absolute URL the handler sees as `request.url`.
    pub url: String,
    /// Header lines, in order, repeated names kept.
    pub headers: HeaderList,
    /// The body, or `None` for a request without one.
    pub body: Option<RequestBody>,
    /// When the HTTP layer received the request: the instance measures how
    /// long requests wait before their handler runs from here.
    pub received: std::time::Instant,
    /// The request's id (its `X-Request-Id`), named in every log record the
    /// request causes: console lines, handler errors, a kill.
    pub request_id: std::sync::Arc<str>,
}

/// A request's header lines, owned in one buffer: what an instance needs of
/// them (names and values, to hand to JavaScript), in one allocation.
///
/// Why not a `HeaderMap`: hyper's header values are slices of its
/// connection's read buffer. Were they to travel to the instance, hyper's
/// read-ahead on the connection while the handler runs would find that
/// buffer shared and allocate a fresh 8 KiB one, on every request. Copying
/// the lines here costs one small allocation instead.
///
/// Invariant: `bytes` is each line's name, a NUL byte, its value and a NUL
/// byte, in order ([`HeaderList::as_bytes`]). HTTP carries no NUL in a name
/// or a value, so the separator is unambiguous; it is also the form the
/// instance hands to JavaScript, as one string that is split only if the
/// handler reads the headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    bytes: Vec<u8>,
    lines: usize,
}

impl HeaderList {
    /// An empty list.
    pub fn new() -> HeaderList {
        HeaderList::default()
    }

    /// An empty list with room for `bytes` of names and values (each line
    /// takes two more).
    pub fn with_capacity(bytes: usize) -> HeaderList {
        HeaderList {
            bytes: crate::recycle::buffer(bytes),
            lines: 0,
        }
    }

    /// The buffer, for reuse (`recycle`).
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }

    /// The lines of `headers` whose name `keep` accepts, in order, copied in
    /// one pass into a buffer sized once, with `room` bytes to spare for
    /// lines the caller adds. No NUL check: an `http` name is a token and a
    /// value excludes control bytes but tab.
    pub fn from_map_where(
        headers: &HeaderMap,
        room: usize,
        mut keep: impl FnMut(&HeaderName) -> bool,
    ) -> HeaderList {
        let size = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 2)
            .sum::<usize>()
            + room;
        let mut list = HeaderList::with_capacity(size);
        for (name, value) in headers {
            if keep(name) {
                list.push_unchecked(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        list
    }

    /// Appends a line. A line with a NUL byte in its name or value is not
    /// one HTTP carries; it is dropped.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        if name.contains(&0) || value.contains(&0) {
            return;
        }
        self.push_unchecked(name, value);
    }

    /// Appends a line the caller made and knows to hold no NUL byte (a
    /// fixed name, an address, an id of visible ASCII), unchecked.
    pub fn push_known(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(!name.contains(&0) && !value.contains(&0));
        self.push_unchecked(name, value);
    }

    /// Appends a line as an HTTP/1 parser read it off the wire, its name
    /// lowercased (names are case-insensitive, and the rest of isopod sees
    /// them lowercase, as `http` keeps them). No NUL check: `httparse`
    /// admits no control byte but tab in a name or a value.
    pub fn push_wire(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(!name.contains(&0) && !value.contains(&0));
        let start = self.bytes.len();
        self.push_unchecked(name, value);
        self.bytes[start..start + name.len()].make_ascii_lowercase();
    }

    fn push_unchecked(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.reserve(name.len() + value.len() + 2);
        self.bytes.extend_from_slice(name);
        self.bytes.push(0);
        self.bytes.extend_from_slice(value);
        self.bytes.push(0);
        self.lines += 1;
    }

    /// The number of lines.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The lines, in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut fields = self.bytes.split(|&b| b == 0);
        std::iter::from_fn(move || {
            let name = fields.next()?;
            let value = fields.next()?;
            // The terminator after the last value yields one empty field,
            // which has no value after it.
            Some((name, value))
        })
    }

    /// Every line as `name NUL value NUL`, in order (empty for no lines).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<&HeaderMap> for HeaderList {
    fn from(headers: &HeaderMap) -> HeaderList {
        HeaderList::from_map_where(headers, 0, |_| true)
    }
}

/// The response to an [`IncomingRequest`].
pub type OutgoingResponse = http::Response<ResponseBody>;

/// What the instance reports about a request with the handler's response,
/// on its body ([`ResponseBody::report`](crate::ResponseBody::report)):
/// for the access log and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct ResponseReport {
    /// CPU charged to the request until its response was ready (streamed
    /// bodies and `waitUntil` work go on after).
    pub cpu: std::time::Duration,
    /// Whether it was its instance's first request: the one that waited for
    /// the instance to be made or its bundle loaded.
    pub cold: bool,
}

/// Why a dispatched request has no response from the handler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    /// The handler threw or its promise rejected; the detail (the JS stack)
    /// has been logged.
    #[error("the handler threw an exception")]
    HandlerThrew {
        /// The error and its stack, source-mapped where possible.
        detail: String,
    },
    /// The handler settled with something that is not a `Response`.
    #[error("{detail}")]
    NotAResponse {
        /// What it returned instead.
        detail: String,
    },
    /// A limit cut the instance off; the isolate is gone.
    #[error("{}", if *this_request { reason.describe() } else { "the app's instance was stopped by a limit another request broke" })]
    Killed {
        /// Which limit.
        reason: crate::limits::KillReason,
        /// Whether this request broke it (otherwise it was in flight on the
        /// same isolate).
        this_request: bool,
    },
    /// The instance stopped (its event loop failed, or it was shut down)
    /// before the request was answered.
    #[error("the instance stopped before answering")]
    InstanceGone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_list_keeps_lines_in_order_with_repeats_and_raw_bytes() {
        let mut map = HeaderMap::new();
        map.append("x-a", "1".parse().unwrap());
        map.append("x-b", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        map.append("x-a", "".parse().unwrap());
        let list = HeaderList::from(&map);
        assert_eq!(list.len(), 3);
        let lines: Vec<_> = list.iter().collect();
        assert_eq!(
            lines,
            [
                (&b"x-a"[..], &b"1"[..]),
                (&b"x-a"[..], &b""[..]),
                (&b"x-b"[..], &b"caf\xe9"[..]),
            ]
        );
        assert_eq!(
            list.as_bytes(),
            b"x-a\x001\x00x-a\x00\x00x-b\x00caf\xe9\x00"
        );
        let mut wire = HeaderList::new();
        wire.push_wire(b"X-Mixed-Case", b"Kept As Is");
        assert_eq!(wire.as_bytes(), b"x-mixed-case\x00Kept As Is\x00");
        assert!(HeaderList::new().iter().next().is_none());
        assert!(HeaderList::new().as_bytes().is_empty());
        let mut with_nul = HeaderList::new();
        with_nul.push(b"x-bad", b"a\0b");
        with_nul.push(b"x-good", b"");
        assert_eq!(with_nul.len(), 1);
        assert_eq!(
            with_nul.iter().collect::<Vec<_>>(),
            [(&b"x-good"[..], &b""[..])]
        );
    }
}
