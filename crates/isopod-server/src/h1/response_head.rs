//! Writing a response head, and how its body is framed, the way hyper's
//! HTTP/1.1 server does (lowercase names in the map's order, a cached
//! `date`, `content-length` for a body of known length, chunked for a
//! stream), so a client cannot tell which path answered it.

use http::header::{self, HeaderMap};
use http::StatusCode;

/// How a response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding: a stream of unknown length.
    Chunked,
    /// Nothing follows: a `HEAD` request, or a status without content.
    Bodiless,
}

/// What the head says of the body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LengthLine {
    /// `content-length: N`.
    Length(u64),
    /// `content-length` with the handler's own value (a `HEAD` response).
    Handler,
    /// `transfer-encoding: chunked`.
    Chunked,
    None,
}

/// A response's framing and length line, as hyper chooses them, for a
/// response to a `HEAD` request or not (`head`).
///
/// `exact` is the body's length when known (zero for none); `declared`
/// reads the handler's `content-length`, if it set a valid one, and is
/// called only when that matters (a stream, or an empty `HEAD` response):
/// a stream of unknown length with a declared length is sent with it.
fn frame(
    head: bool,
    status: StatusCode,
    exact: Option<u64>,
    declared: impl FnOnce() -> Option<u64>,
) -> (Framing, LengthLine) {
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if no_content {
        return (Framing::Bodiless, LengthLine::None);
    }
    let framing = |framing| if head { Framing::Bodiless } else { framing };
    let declared = match exact {
        Some(length) if length > 0 || !head => None,
        _ => declared(),
    };
    match (exact, declared) {
        // A `HEAD` response may state the length its `GET` would have.
        (Some(0), Some(_)) if head => (Framing::Bodiless, LengthLine::Handler),
        (Some(0), _) if head => (Framing::Bodiless, LengthLine::None),
        (Some(length), _) | (None, Some(length)) => {
            (framing(Framing::Length(length)), LengthLine::Length(length))
        }
        (None, None) if head => (Framing::Bodiless, LengthLine::None),
        (None, None) => (Framing::Chunked, LengthLine::Chunked),
    }
}

/// Appends the head of a response (to a `HEAD` request, if `head`) to
/// `out` and returns how its body follows.
///
/// The handler's `content-length` lines are replaced by the true length
/// (for a body of known length) or kept as its only statement (a stream);
/// hop-by-hop lines are already gone (`strip_hop_by_hop`). A `request_id`
/// is written as `x-request-id` after the handler's lines (where hyper,
/// given it in the map, puts a name the handler did not set), replacing the
/// handler's own. `close` adds `connection: close`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    head: bool,
    status: StatusCode,
    headers: &HeaderMap,
    request_id: Option<&str>,
    exact: Option<u64>,
    close: bool,
) -> Framing {
    let declared = || {
        let value = headers.get(header::CONTENT_LENGTH)?;
        std::str::from_utf8(value.as_bytes())
            .ok()?
            .parse::<u64>()
            .ok()
    };
    let (framing, length_line) = frame(head, status, exact, declared);
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        // A reason must be written: many parsers expect one.
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut dated = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || (request_id.is_some() && name == crate::service::X_REQUEST_ID)
        {
            continue;
        }
        dated |= name == header::DATE;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = request_id {
        line(out, b"x-request-id", id.as_bytes());
    }
    // Where hyper puts it: after the handler's lines, before the length.
    if close {
        line(out, b"connection", b"close");
    }
    let mut digits = itoa::Buffer::new();
    match length_line {
        LengthLine::Length(length) => {
            line(out, b"content-length", digits.format(length).as_bytes());
        }
        LengthLine::Handler => {
            if let Some(value) = headers.get(header::CONTENT_LENGTH) {
                line(out, b"content-length", value.as_bytes());
            }
        }
        LengthLine::Chunked => line(out, b"transfer-encoding", b"chunked"),
        LengthLine::None => {}
    }
    if !dated {
        crate::date::with_date(|date| line(out, b"date", date));
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn head(
        method: http::Method,
        status: u16,
        headers: &[(&str, &str)],
        exact: Option<u64>,
    ) -> (String, Framing) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).unwrap();
        let framing = encode(
            &mut out,
            method == http::Method::HEAD,
            status,
            &map,
            None,
            exact,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        // The date changes; the rest is compared.
        let (before, after) = text.split_once("date: ").expect("a date line");
        assert_eq!(after.len(), 29 + 4, "{text:?}");
        (before.to_string(), framing)
    }

    #[test]
    fn a_body_of_known_length_states_it_and_replaces_the_handlers() {
        assert_eq!(
            head(http::Method::GET, 200, &[("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")], Some(5)),
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n".into(),
                Framing::Length(5)
            )
        );
        assert_eq!(
            head(http::Method::GET, 404, &[("content-length", "99")], Some(0)),
            (
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n".into(),
                Framing::Length(0)
            )
        );
        assert_eq!(
            head(http::Method::GET, 599, &[], Some(1)).0,
            "HTTP/1.1 599 <none>\r\ncontent-length: 1\r\n"
        );
    }

    #[test]
    fn a_stream_is_chunked_unless_the_handler_states_its_length() {
        assert_eq!(
            head(http::Method::GET, 200, &[], None),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n".into(),
                Framing::Chunked
            )
        );
        assert_eq!(
            head(http::Method::GET, 200, &[("content-length", "7")], None),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n".into(),
                Framing::Length(7)
            )
        );
    }

    #[test]
    fn head_and_contentless_statuses_send_no_body() {
        assert_eq!(
            head(http::Method::HEAD, 200, &[], Some(5)),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n".into(),
                Framing::Bodiless
            )
        );
        assert_eq!(
            head(
                http::Method::HEAD,
                200,
                &[("content-length", "1234")],
                Some(0)
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n".into(),
                Framing::Bodiless
            )
        );
        assert_eq!(
            head(http::Method::HEAD, 200, &[], None),
            ("HTTP/1.1 200 OK\r\n".into(), Framing::Bodiless)
        );
        assert_eq!(
            head(http::Method::GET, 204, &[("content-length", "3")], Some(3)),
            ("HTTP/1.1 204 No Content\r\n".into(), Framing::Bodiless)
        );
        assert_eq!(
            head(http::Method::GET, 304, &[], None),
            ("HTTP/1.1 304 Not Modified\r\n".into(), Framing::Bodiless)
        );
    }

    #[test]
    fn the_date_is_the_threads_clock_when_last_refreshed() {
        crate::date::refresh_date();
        let mut out = Vec::new();
        encode(
            &mut out,
            false,
            StatusCode::OK,
            &HeaderMap::new(),
            None,
            Some(0),
            false,
        );
        let text = String::from_utf8(out).unwrap();
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix("date: "))
            .expect("a date line");
        let date = httpdate::parse_http_date(value).unwrap();
        let lag = SystemTime::now().duration_since(date).unwrap();
        assert!(lag.as_secs() <= 1, "{value}");
    }

    #[test]
    fn the_handlers_date_is_kept_and_close_is_stated() {
        let mut map = HeaderMap::new();
        map.insert(
            header::DATE,
            "Tue, 01 Jan 2030 00:00:00 GMT".parse().unwrap(),
        );
        let mut out = Vec::new();
        encode(&mut out, false, StatusCode::OK, &map, None, Some(0), true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: Tue, 01 Jan 2030 00:00:00 GMT\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
