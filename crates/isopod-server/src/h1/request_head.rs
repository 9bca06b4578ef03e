//! Reading a request head, and deciding who serves it: isopod's own path
//! takes the requests that dominate an edge runtime's traffic (HTTP/1.1,
//! no body, an origin-form target); everything else is left to hyper.
//!
//! Invariant: a head this module takes is one hyper would have accepted
//! and read the same way. Whatever it is unsure of (a body, an upgrade,
//! `Expect`, HTTP/1.0, an unusual target byte, a malformed or oversized
//! head) is deferred, and hyper, given the same bytes, decides.

use std::mem::MaybeUninit;

use http::Method;
use isopod_runtime::HeaderList;

use crate::http_semantics::{alphanumerics_and, end_to_end_wire_lines, lists_token};

/// Header lines in one request; more are answered 431 (by hyper).
pub(crate) const MAX_HEADER_LINES: usize = 100;

/// The largest request head buffered; a bigger one is answered 431 (by
/// hyper).
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;

/// What the bytes at the start of a connection's input are.
pub(crate) enum Scan<'input> {
    /// The start of a head, not yet all of it.
    Partial,
    /// A whole head isopod serves itself.
    Simple(SimpleHead<'input>),
    /// A head (or garbage) for hyper to read.
    Defer,
}

/// A request head of the kind isopod's own path serves.
pub(crate) struct SimpleHead<'input> {
    pub(crate) method: Method,
    /// Origin-form: `/path?query`.
    pub(crate) target: &'input str,
    /// The `Host` line's value (a head with two is deferred).
    pub(crate) host: Option<&'input [u8]>,
    /// The end-to-end lines, as the handler gets them.
    pub(crate) headers: HeaderList,
    /// Whether any of them is one `edge::vet` must vet.
    pub(crate) edge_lines: bool,
    /// The client asked for the connection to close after the response.
    pub(crate) close: bool,
    /// The head's length in bytes, its blank line included.
    pub(crate) length: usize,
}

/// Reads the head at the start of `input`.
pub(crate) fn scan(input: &[u8]) -> Scan<'_> {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_LINES];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(input, &mut lines) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Scan::Partial,
        Err(_) => return Scan::Defer,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Scan::Defer;
    };
    // hyper refuses a head over its limit (`max_header_size`); so is it
    // here, however it arrived.
    if length > MAX_HEAD_BYTES {
        return Scan::Defer;
    }
    if !is_simple_origin_form(target) {
        return Scan::Defer;
    }
    let mut host = None;
    let mut close = false;
    let mut content_length_seen = false;
    for line in request.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            // Two Host lines are refused, by the path that refuses bad
            // targets (`http_semantics::request_target`).
            if host.is_some() {
                return Scan::Defer;
            }
            host = Some(line.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= lists_token(line.value, b"close");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A declared empty body is no body; any other, or a second
            // declaration, is hyper's to judge.
            if line.value != b"0" || content_length_seen {
                return Scan::Defer;
            }
            content_length_seen = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Scan::Defer;
        }
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Scan::Defer;
    };
    let (headers, edge_lines) = end_to_end_wire_lines(request.headers);
    Scan::Simple(SimpleHead {
        method,
        target,
        host,
        headers,
        edge_lines,
        close,
        length,
    })
}

/// Whether a request target is origin-form made only of bytes that mean
/// the same to every parser: RFC 3986's unreserved, sub-delims, `:`, `@`,
/// `/`, `?` and `%`. No fragment (`#`), no byte `http::Uri` would refuse or
/// re-encode; anything else is hyper's to judge.
fn is_simple_origin_form(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| TARGET_BYTES[b as usize])
}

/// The bytes [`is_simple_origin_form`] accepts, as a table.
static TARGET_BYTES: [bool; 256] = alphanumerics_and(b"-._~!$&'()*+,;=:@/?%");

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(input: &[u8]) -> SimpleHead<'_> {
        match scan(input) {
            Scan::Simple(head) => head,
            Scan::Partial => panic!("partial: {:?}", String::from_utf8_lossy(input)),
            Scan::Defer => panic!("deferred: {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn deferred(input: &[u8]) -> bool {
        matches!(scan(input), Scan::Defer)
    }

    #[test]
    fn a_plain_get_is_taken_with_its_lines_lowercased_and_hop_by_hop_ones_dropped() {
        let input = b"GET /a/b?c=1&d=%20 HTTP/1.1\r\nHost: example.com:8080\r\nX-One: A\r\n\
            Connection: keep-alive, X-Private\r\nx-private: 1\r\nKeep-Alive: 5\r\n\
            Content-Length: 0\r\n\r\nGET /next";
        let head = simple(input);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.target, "/a/b?c=1&d=%20");
        assert_eq!(head.host, Some(&b"example.com:8080"[..]));
        assert!(!head.close);
        assert_eq!(head.length, input.len() - b"GET /next".len());
        let lines: Vec<_> = head.headers.iter().collect();
        assert_eq!(
            lines,
            [
                (&b"host"[..], &b"example.com:8080"[..]),
                (&b"x-one"[..], &b"A"[..]),
                (&b"content-length"[..], &b"0"[..]),
            ]
        );
    }

    #[test]
    fn connection_close_is_seen_in_any_case_and_position() {
        assert!(simple(b"HEAD / HTTP/1.1\r\nconnection: TE, Close\r\n\r\n").close);
        assert!(!simple(b"GET / HTTP/1.1\r\nconnection: closed\r\n\r\n").close);
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(scan(b""), Scan::Partial));
        assert!(matches!(
            scan(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Scan::Partial
        ));
    }

    #[test]
    fn whatever_hyper_must_judge_is_deferred() {
        for input in [
            &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /{x} HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(deferred(input), "{:?}", String::from_utf8_lossy(input));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADER_LINES {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(deferred(&many), "too many lines");
        let mut huge = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        huge.resize(MAX_HEAD_BYTES, b'v');
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(deferred(&huge), "a head over the limit, whole in one read");
    }
}
