//! The HTTP rules a Workers handler relies on, applied at the edge: absolute
//! request URLs from the `Host` header, and no hop-by-hop headers in either
//! direction.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use isopod_runtime::HeaderList;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// A `static`: a `const` array of `HeaderName`s is built and dropped at
/// every use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The names `Connection` lists in `headers`, which are hop-by-hop too.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including any named by `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (`Connection`, which names the others, is one
    // itself): one pass over the names then, instead of a hashed removal
    // per hop-by-hop name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    for name in named_by_connection(headers).iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// A request's end-to-end header lines, in order, as the handler gets them:
/// every line but the hop-by-hop ones (those `Connection` lists included),
/// copied in one pass, the map itself left as it is (it is dropped next).
///
/// Also says whether any line is one `edge::vet` must vet.
pub(crate) fn end_to_end_lines(headers: &HeaderMap) -> (HeaderList, bool) {
    // Browsers send `Connection` with nearly every request, so this is the
    // usual case rather than a rare one.
    let named = if headers.contains_key(header::CONNECTION) {
        named_by_connection(headers)
    } else {
        Vec::new()
    };
    let mut edge_lines = false;
    let list = HeaderList::from_map_where(headers, crate::edge::ADDED_BYTES, |name| {
        edge_lines |= crate::edge::is_edge_name(name.as_str().as_bytes());
        !HOP_BY_HOP.contains(name) && !named.contains(name)
    });
    (list, edge_lines)
}

/// [`end_to_end_lines`] for header lines as they came on the wire, names in
/// any case: the lines the handler gets, names lowercased.
pub(crate) fn end_to_end_wire_lines(lines: &[httparse::Header<'_>]) -> (HeaderList, bool) {
    let connection_values: Vec<&[u8]> = lines
        .iter()
        .filter(|line| line.name.eq_ignore_ascii_case(header::CONNECTION.as_str()))
        .map(|line| line.value)
        .collect();
    let size: usize = lines.iter().map(|l| l.name.len() + l.value.len() + 2).sum();
    let mut list = HeaderList::with_capacity(size + crate::edge::ADDED_BYTES);
    let mut edge_lines = false;
    for line in lines {
        let hop_by_hop = HOP_BY_HOP
            .iter()
            .any(|name| line.name.eq_ignore_ascii_case(name.as_str()))
            || connection_values
                .iter()
                .any(|value| lists_token(value, line.name.as_bytes()));
        if !hop_by_hop {
            list.push_wire(line.name.as_bytes(), line.value);
        }
        edge_lines |= crate::edge::is_edge_name(line.name.as_bytes());
    }
    (list, edge_lines)
}

/// Whether a comma-separated header value (`Connection`'s) lists `token`,
/// in any case.
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Why a request cannot be given to a handler.
#[derive(Debug, PartialEq, Eq)]
///
/// In a multi-tenant router every disagreement about which host a request
/// is for is a way past a proxy that admits only some hosts, so each such
/// request gets one answer, 400, from both HTTP paths (RFC 9112 §3.2).
pub(crate) enum BadRequest {
    MissingHost,
    InvalidHost,
    /// More than one `Host` line.
    DuplicateHost,
    /// An absolute-form target whose authority is not the `Host` line.
    HostMismatch,
    /// An authority-form or asterisk-form target (`CONNECT`, `OPTIONS *`):
    /// isopod opens no tunnels and has no server-wide options.
    UnsupportedTarget,
}

impl BadRequest {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BadRequest::MissingHost => "Bad Request: the request has no Host header",
            BadRequest::InvalidHost => "Bad Request: the Host header is not a valid host",
            BadRequest::DuplicateHost => "Bad Request: the request has more than one Host header",
            BadRequest::HostMismatch => {
                "Bad Request: the Host header does not name the request target's host"
            }
            BadRequest::UnsupportedTarget => {
                "Bad Request: only origin-form (/path) and absolute-form (http://host/path) targets are served; isopod opens no tunnels"
            }
        }
    }
}

/// Where a request goes: its absolute URL, as `request.url` shows it, and
/// the host it was built from, which routing matches.
pub(crate) struct Target<'a> {
    pub(crate) url: String,
    pub(crate) host: &'a str,
}

/// The request's [`Target`]: from an absolute-form URI as it is (its
/// `Host` line, if any, must name the same host, so the router and the
/// handler agree), else from the `Host` header, checked once here for both
/// uses.
pub(crate) fn request_target(parts: &Parts) -> Result<Target<'_>, BadRequest> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().map(HeaderValue::as_bytes);
    if hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    if parts.method == http::Method::CONNECT {
        return Err(BadRequest::UnsupportedTarget);
    }
    if let (Some(_), Some(authority)) = (parts.uri.scheme(), parts.uri.authority()) {
        if host.is_some_and(|host| !host.eq_ignore_ascii_case(authority.as_str().as_bytes())) {
            return Err(BadRequest::HostMismatch);
        }
        return Ok(Target {
            url: parts.uri.to_string(),
            host: authority.as_str(),
        });
    }
    match parts.uri.path_and_query() {
        Some(target) if target.as_str().starts_with('/') => origin_target(host, target.as_str()),
        _ => Err(BadRequest::UnsupportedTarget),
    }
}

/// The [`Target`] of an origin-form request (`/path?query`): its URL from
/// the `Host` header's value, checked here.
pub(crate) fn origin_target<'a>(
    host: Option<&'a [u8]>,
    path: &str,
) -> Result<Target<'a>, BadRequest> {
    let host = host.ok_or(BadRequest::MissingHost)?;
    if !is_host_and_port(host) {
        return Err(BadRequest::InvalidHost);
    }
    // SAFETY: `is_host_and_port` accepts only ASCII bytes (its tables and
    // checks admit no byte above 0x7F), and ASCII is valid UTF-8.
    let host = unsafe { std::str::from_utf8_unchecked(host) };
    // A recycled buffer (`isopod_runtime::buffer`): empty, so valid UTF-8.
    let mut url = String::from_utf8(isopod_runtime::buffer(
        "http://".len() + host.len() + path.len(),
    ))
    .unwrap_or_default();
    url.push_str("http://");
    url.push_str(host);
    url.push_str(path);
    Ok(Target { url, host })
}

/// Whether a `Host` header is `host[:port]` (RFC 9110 §7.2 with RFC 3986
/// §3.2.2): a registered name or IPv4 address, or an IPv6 literal in
/// brackets, then an optional port. No user info (`@`), path or spaces: the
/// handler's URL is built from it. Checked in place, where parsing it as an
/// `http::uri::Authority` would copy it.
fn is_host_and_port(value: &[u8]) -> bool {
    let (host_ok, port) = match value.strip_prefix(b"[") {
        Some(bracketed) => {
            let Some(close) = bracketed.iter().position(|&b| b == b']') else {
                return false;
            };
            let (literal, after) = (&bracketed[..close], &bracketed[close + 1..]);
            let port = match after {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return false,
            };
            let literal_ok = !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            (literal_ok, port)
        }
        None => {
            let (host, port) = match value.iter().position(|&b| b == b':') {
                Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
                None => (value, None),
            };
            let name_ok = !host.is_empty() && host.iter().all(|&b| HOST_NAME_BYTES[b as usize]);
            (name_ok, port)
        }
    };
    host_ok && port.is_none_or(|port| port.iter().all(u8::is_ascii_digit))
}

/// The bytes of a registered name or IPv4 address (RFC 3986's unreserved,
/// sub-delims and `%`), as a table: one load per byte.
static HOST_NAME_BYTES: [bool; 256] = alphanumerics_and(b"-._~!$&'()*+,;=%");

/// A byte table (`table[byte]`) that holds ASCII letters and digits and
/// the bytes of `extra`.
pub(crate) const fn alphanumerics_and(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn absolute_url(parts: &Parts) -> Result<String, BadRequest> {
        request_target(parts).map(|target| target.url)
    }

    #[test]
    fn url_comes_from_the_host_header() {
        assert_eq!(
            absolute_url(&parts("/a?b=1", Some("example.com:8080"))).unwrap(),
            "http://example.com:8080/a?b=1"
        );
        assert_eq!(
            absolute_url(&parts("/", None)),
            Err(BadRequest::MissingHost)
        );
        assert_eq!(
            absolute_url(&parts("/", Some("a b"))),
            Err(BadRequest::InvalidHost)
        );
        assert_eq!(
            absolute_url(&parts("/", Some("[::1]:8080"))).unwrap(),
            "http://[::1]:8080/"
        );
        for bad in ["u@h", "", "h/p", "h:8o", "[::1", "[::1]x", "[]", "a:1:2"] {
            assert_eq!(
                absolute_url(&parts("/", Some(bad))),
                Err(BadRequest::InvalidHost),
                "{bad}"
            );
        }
        let absolute = parts("http://abs.example/x", None);
        let target = request_target(&absolute).unwrap();
        assert_eq!(
            (target.url.as_str(), target.host),
            ("http://abs.example/x", "abs.example")
        );
        let agreeing = parts("http://abs.example/x", Some("ABS.example"));
        assert_eq!(request_target(&agreeing).unwrap().host, "abs.example");
    }

    #[test]
    fn a_request_whose_host_is_in_doubt_is_refused() {
        assert_eq!(
            absolute_url(&parts("http://b.localhost/x", Some("a.localhost"))),
            Err(BadRequest::HostMismatch)
        );
        let mut twice = parts("/", Some("a.localhost"));
        twice
            .headers
            .append(header::HOST, HeaderValue::from_static("b.localhost"));
        assert_eq!(absolute_url(&twice), Err(BadRequest::DuplicateHost));
        assert_eq!(
            absolute_url(&parts("*", Some("a"))),
            Err(BadRequest::UnsupportedTarget)
        );
        let mut connect = parts("a.localhost:443", Some("a.localhost:443"));
        connect.method = http::Method::CONNECT;
        assert_eq!(absolute_url(&connect), Err(BadRequest::UnsupportedTarget));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        let lines: Vec<_> = end_to_end_lines(&headers)
            .0
            .iter()
            .map(|(name, _)| name.to_vec())
            .collect();
        assert_eq!(
            lines,
            [b"x-kept".to_vec()],
            "the request's copy keeps the same one"
        );
        let wire = [
            httparse::Header {
                name: "Connection",
                value: b"keep-alive, X-Private",
            },
            httparse::Header {
                name: "X-Private",
                value: b"1",
            },
            httparse::Header {
                name: "Keep-Alive",
                value: b"timeout=5",
            },
            httparse::Header {
                name: "X-Kept",
                value: b"1",
            },
        ];
        assert_eq!(
            end_to_end_wire_lines(&wire),
            end_to_end_lines(&headers),
            "the same lines from the wire as from the map"
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
        // Without Connection, the listed ones still go.
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("proxy-connection", "1".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        assert_eq!(end_to_end_lines(&headers).0.len(), 1);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
