//! Who a request is from, as the handler is told: the client's address and
//! scheme, and the request's id.
//!
//! isopod usually sits behind a load balancer or a TLS-terminating proxy.
//! Only a peer in [`TrustedProxies`] is believed about the client
//! (`X-Forwarded-For`, `X-Forwarded-Proto`) and about the request's id
//! (`X-Request-Id`); from any other peer those lines are dropped and
//! replaced with what isopod saw itself. The handler always finds
//! `CF-Connecting-IP` (the client's address, as on Workers) and
//! `X-Request-Id`, and `request.url` carries the scheme the client used.
//!
//! Invariant: a line the handler reads under one of [`EDGE_HEADERS`] was
//! written by isopod or passed on from a trusted peer, never taken from an
//! untrusted client as it is.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use isopod_runtime::HeaderList;

/// The header lines isopod writes or vets for every request.
const EDGE_HEADERS: [&[u8]; 4] = [
    b"x-request-id",
    b"cf-connecting-ip",
    b"x-forwarded-for",
    b"x-forwarded-proto",
];

/// Whether `name` (in any case) is one of [`EDGE_HEADERS`]: asked of every
/// line as the list is built, so that [`vet`] reads the list only when one
/// is there.
pub(crate) fn is_edge_name(name: &[u8]) -> bool {
    // Lengths first: most names are ruled out by one comparison.
    matches!(name.len(), 12 | 15 | 16 | 17)
        && EDGE_HEADERS
            .iter()
            .any(|edge| edge.eq_ignore_ascii_case(name))
}

/// Room a request's header list is made with for the lines [`vet`] adds
/// (names, an IPv6 address, a made id): so that adding them does not move
/// the list.
pub(crate) const ADDED_BYTES: usize = 192;

/// The longest `X-Request-Id` taken from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The peers whose forwarding headers are believed: addresses and CIDR
/// ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses `entries`: each an IP address (`10.0.0.1`, `::1`) or a CIDR
    /// range (`10.0.0.0/8`). Names the first entry that is neither.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let nets = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("'{entry}' is not an IP address or a CIDR range (10.0.0.0/8)")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Whether `peer` is one of them.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.nets.iter().any(|net| net.contains(&peer))
    }

    /// Whether there are none (the usual case for a server facing clients).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// An IPv4 address as itself, not as the IPv4-mapped IPv6 form a dual-stack
/// socket reports it in.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP address and its text, made once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Address {
    ip: IpAddr,
    text: [u8; 45],
    len: u8,
}

impl Address {
    fn new(ip: IpAddr) -> Address {
        let ip = canonical(ip);
        let mut text = [0u8; 45];
        let len = format_ip(ip, &mut text).len() as u8;
        Address { ip, text, len }
    }

    /// The address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The address as text (`192.0.2.7`, `2001:db8::1`).
    pub(crate) fn as_str(&self) -> &str {
        // Written by `Display`, so UTF-8.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A connection's peer: its address as text is made once per connection,
/// not per request.
pub(crate) type Peer = Address;

impl Peer {
    /// The peer of a connection from `addr`.
    pub(crate) fn of(addr: std::net::SocketAddr) -> Peer {
        Address::new(addr.ip())
    }
}

/// What isopod tells a handler about its request's origin.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// The client's address.
    pub(crate) client: Address,
    /// Whether the client spoke HTTPS (to a proxy in front of isopod).
    pub(crate) https: bool,
    /// The request's id.
    pub(crate) request_id: Arc<str>,
}

/// Rewrites `headers` (the request's end-to-end lines) for the handler and
/// returns what they now say about the request's origin.
///
/// From a trusted `peer`: the client is the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy, the scheme is the
/// first of `X-Forwarded-Proto`, and a well-formed `X-Request-Id` is kept.
/// From any other peer, or without those lines, the client is the peer,
/// the scheme is `http` and the id is made here.
/// `edge_lines` says whether the list holds any line of [`EDGE_HEADERS`]
/// (as [`is_edge_name`] found while building it); without, the list is not
/// read, only added to.
pub(crate) fn vet(
    headers: &mut HeaderList,
    edge_lines: bool,
    peer: &Peer,
    trusted: &TrustedProxies,
) -> Origin {
    let mut origin = Origin {
        client: *peer,
        https: false,
        request_id: Arc::from(""),
    };
    let mut given_id: Option<&[u8]> = None;
    let mut has_edge_lines = false;
    let from_proxy = !trusted.is_empty() && trusted.trusts(peer.ip());
    let lines = edge_lines.then(|| headers.iter()).into_iter().flatten();
    for (name, value) in lines {
        if !EDGE_HEADERS.contains(&name) {
            continue;
        }
        has_edge_lines = true;
        if !from_proxy {
            continue;
        }
        match name {
            b"x-forwarded-for" => {
                if let Some(client) = forwarded_client(value, trusted) {
                    origin.client = Address::new(client);
                }
            }
            b"x-forwarded-proto" => {
                let first = value.split(|&b| b == b',').next().unwrap_or_default();
                origin.https = first.trim_ascii().eq_ignore_ascii_case(b"https");
            }
            b"x-request-id" if well_formed_id(value) => given_id = Some(value),
            _ => {}
        }
    }
    origin.request_id = match given_id {
        // Checked ASCII above.
        Some(id) => Arc::from(std::str::from_utf8(id).unwrap_or_default()),
        None => next_request_id(),
    };
    if has_edge_lines {
        let kept_forwarded_for = from_proxy;
        let mut rewritten = HeaderList::with_capacity(headers.as_bytes().len() + ADDED_BYTES);
        for (name, value) in headers.iter() {
            let keep =
                !EDGE_HEADERS.contains(&name) || (kept_forwarded_for && name == b"x-forwarded-for");
            if keep {
                rewritten.push(name, value);
            }
        }
        *headers = rewritten;
    }
    let client = origin.client.as_str().as_bytes();
    // Known names, and values with no NUL (an address, a scheme, an id of
    // visible ASCII): no check needed.
    if !(from_proxy && has_forwarded_for(headers)) {
        headers.push_known(b"x-forwarded-for", client);
    }
    headers.push_known(
        b"x-forwarded-proto",
        if origin.https { b"https" } else { b"http" },
    );
    headers.push_known(b"cf-connecting-ip", client);
    headers.push_known(b"x-request-id", origin.request_id.as_bytes());
    origin
}

fn has_forwarded_for(headers: &HeaderList) -> bool {
    headers.iter().any(|(name, _)| name == b"x-forwarded-for")
}

/// The client in an `X-Forwarded-For` value: walking from the right (the
/// address the nearest proxy saw), the first that is not a trusted proxy.
fn forwarded_client(value: &[u8], trusted: &TrustedProxies) -> Option<IpAddr> {
    let text = std::str::from_utf8(value).ok()?;
    let mut last = None;
    for item in text.rsplit(',') {
        let addr = parse_forwarded_addr(item.trim())?;
        last = Some(addr);
        if !trusted.trusts(addr) {
            return Some(addr);
        }
    }
    last
}

/// An address as `X-Forwarded-For` lists it: bare, or with a port
/// (`1.2.3.4:5678`, `[::1]:5678`).
fn parse_forwarded_addr(item: &str) -> Option<IpAddr> {
    if let Ok(addr) = item.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    item.parse::<std::net::SocketAddr>()
        .ok()
        .map(|socket| canonical(socket.ip()))
}

/// An id a proxy may set: 1 to 128 visible ASCII characters.
fn well_formed_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_REQUEST_ID && value.iter().all(|b| b.is_ascii_graphic())
}

/// `addr` as text, in `buffer`, with no allocation.
fn format_ip(addr: IpAddr, buffer: &mut [u8; 45]) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    // 45 bytes hold the longest IPv6 text form.
    let _ = write!(cursor, "{addr}");
    let written = cursor.position() as usize;
    &buffer[..written]
}

/// This process's prefix for the ids it makes: random, so that ids from
/// different processes (or a restart) do not collide.
fn process_prefix() -> u64 {
    static PREFIX: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.load(Ordering::Relaxed);
    if prefix != 0 {
        return prefix;
    }
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the clock still tells processes apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    let fresh = u64::from_le_bytes(bytes) | 1;
    match PREFIX.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(current) => current,
    }
}

/// The next id made on this thread: the process's prefix, the thread's
/// number and its count, as 32 hex digits. Unique without a shared counter.
fn next_request_id() -> Arc<str> {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: Cell<(u64, u64)> = const { Cell::new((u64::MAX, 0)) };
    }
    let (thread, count) = NEXT.with(|next| {
        let (mut thread, count) = next.get();
        if thread == u64::MAX {
            thread = THREADS.fetch_add(1, Ordering::Relaxed);
        }
        next.set((thread, count.wrapping_add(1)));
        (thread, count)
    });
    let mixed = (thread << 48) ^ count;
    let mut text = [0u8; 32];
    hex(process_prefix(), &mut text[..16]);
    hex(mixed, &mut text[16..]);
    // Hex digits are ASCII.
    Arc::from(std::str::from_utf8(&text).unwrap_or_default())
}

fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pairs: &[(&str, &str)]) -> HeaderList {
        let mut list = HeaderList::new();
        for (name, value) in pairs {
            list.push(name.as_bytes(), value.as_bytes());
        }
        list
    }

    fn get<'a>(list: &'a HeaderList, name: &str) -> Vec<&'a str> {
        list.iter()
            .filter(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
            .collect()
    }

    #[test]
    fn an_untrusted_peer_is_not_believed() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let mut headers = lines(&[
            ("accept", "*/*"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-request-id", "forged"),
        ]);
        let peer = Peer::of("192.0.2.7:1234".parse().unwrap());
        let origin = vet(&mut headers, true, &peer, &trusted);
        assert_eq!(origin.client.ip(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert!(!origin.https);
        assert_ne!(&*origin.request_id, "forged");
        assert_eq!(get(&headers, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(get(&headers, "cf-connecting-ip"), ["192.0.2.7"]);
        assert_eq!(get(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&headers, "x-request-id"), [&*origin.request_id]);
        assert_eq!(get(&headers, "accept"), ["*/*"]);
    }

    #[test]
    fn a_trusted_proxy_names_the_client_scheme_and_id() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "::1"]).unwrap();
        let mut headers = lines(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "abc-123"),
        ]);
        let peer = Peer::of("[::ffff:10.0.0.1]:1234".parse().unwrap());
        let origin = vet(&mut headers, true, &peer, &trusted);
        assert_eq!(origin.client.ip(), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(origin.client.as_str(), "203.0.113.9");
        assert!(origin.https);
        assert_eq!(&*origin.request_id, "abc-123");
        assert_eq!(
            get(&headers, "x-forwarded-for"),
            ["6.6.6.6, 203.0.113.9, 10.1.2.3"]
        );
        assert_eq!(get(&headers, "cf-connecting-ip"), ["203.0.113.9"]);
        assert_eq!(get(&headers, "x-request-id"), ["abc-123"]);
    }

    #[test]
    fn made_ids_differ_and_are_hex() {
        let a = next_request_id();
        let b = next_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let error = TrustedProxies::parse(&["10.0.0.0/8", "proxy.internal"]).unwrap_err();
        assert!(error.contains("'proxy.internal'"), "{error}");
    }
}
