//! Which IP addresses are "reserved": not on the public internet, and so not
//! for tenants to reach by default.
//!
//! [`classify`] is the one definition; [`reserved_nets`] lists the same set
//! as CIDR ranges (what the permission container and the deny list are built
//! from), and the tests check that the two agree.
//!
//! Invariants:
//! - An IPv6 address that embeds an IPv4 address (IPv4-mapped
//!   `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) is
//!   classified as the IPv4 address it embeds: reaching `::ffff:127.0.0.1`
//!   (or a NAT64 gateway's translation of `127.0.0.1`) is reaching loopback.
//! - Pure: no I/O, no global state. The machine's own addresses are added by
//!   the policy ([`crate::NetPolicy`]), not here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A special-purpose address range that isopod apps may not reach unless
/// their `allow_net` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedRange {
    /// `0.0.0.0/8` ("this network"; `0.0.0.0` reaches the local host on
    /// Linux) and `::`.
    Unspecified,
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// RFC 6598 shared address space (carrier-grade NAT): `100.64.0.0/10`.
    SharedAddressSpace,
    /// `169.254.0.0/16` (where cloud metadata services such as
    /// `169.254.169.254` live) and `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`, IPv6's private ranges (AWS's IPv6 metadata service is in
    /// it).
    UniqueLocal,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// The documentation ranges: `192.0.2.0/24`, `198.51.100.0/24`,
    /// `203.0.113.0/24`, `2001:db8::/32`.
    Documentation,
    /// RFC 2544 benchmarking: `198.18.0.0/15`, used inside some networks.
    Benchmarking,
    /// Other IANA special-purpose ranges: `192.0.0.0/24`, `240.0.0.0/4`,
    /// the deprecated IPv4-compatible `::/96` and site-local `fec0::/10`,
    /// discard-only `100::/64` and local-use NAT64 `64:ff9b:1::/48`.
    Reserved,
}

impl ReservedRange {
    /// The range in words, plural ("loopback addresses"), for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ReservedRange::Unspecified => "unspecified addresses (0.0.0.0/8, ::)",
            ReservedRange::Loopback => "loopback addresses",
            ReservedRange::Private => "private (RFC 1918) addresses",
            ReservedRange::SharedAddressSpace => "carrier-grade NAT addresses (100.64.0.0/10)",
            ReservedRange::LinkLocal => "link-local addresses (including cloud metadata services)",
            ReservedRange::UniqueLocal => "unique-local addresses (fc00::/7)",
            ReservedRange::Multicast => "multicast addresses",
            ReservedRange::Broadcast => "broadcast addresses",
            ReservedRange::Documentation => "documentation addresses",
            ReservedRange::Benchmarking => "benchmarking addresses (198.18.0.0/15)",
            ReservedRange::Reserved => "reserved special-purpose addresses",
        }
    }
}

/// The IPv4 ranges, most specific first where they nest (broadcast inside
/// `240.0.0.0/4`).
const V4: &[(Ipv4Addr, u8, ReservedRange)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, ReservedRange::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, ReservedRange::Private),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        ReservedRange::SharedAddressSpace,
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, ReservedRange::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, ReservedRange::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, ReservedRange::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, ReservedRange::Reserved),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        ReservedRange::Documentation,
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, ReservedRange::Private),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        ReservedRange::Benchmarking,
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        ReservedRange::Documentation,
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        ReservedRange::Documentation,
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, ReservedRange::Multicast),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        ReservedRange::Broadcast,
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, ReservedRange::Reserved),
];

/// The IPv6 ranges that do not embed an IPv4 address, most specific first
/// (`::` and `::1` inside `::/96`).
const V6: &[(Ipv6Addr, u8, ReservedRange)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, ReservedRange::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, ReservedRange::Loopback),
    (Ipv6Addr::UNSPECIFIED, 96, ReservedRange::Reserved),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        ReservedRange::Reserved,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        ReservedRange::Reserved,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        ReservedRange::Documentation,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        ReservedRange::UniqueLocal,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        ReservedRange::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        ReservedRange::Reserved,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        ReservedRange::Multicast,
    ),
];

/// IPv6 prefixes that embed an IPv4 address: (prefix, its length, the bit
/// offset of the embedded address).
const EMBEDDING: &[(Ipv6Addr, u8, u8)] = &[
    // IPv4-mapped, ::ffff:a.b.c.d.
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, 96),
    // NAT64 well-known prefix (RFC 6052), 64:ff9b::a.b.c.d.
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, 96),
    // 6to4 (RFC 3056), 2002:AABB:CCDD::/48.
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, 16),
];

/// Which reserved range `ip` is in, or `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<ReservedRange> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => V6
                .iter()
                .find(|(net, len, _)| v6_net(*net, *len).contains(&v6))
                .map(|(_, _, range)| *range),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<ReservedRange> {
    V4.iter()
        .find(|(net, len, _)| v4_net(*net, *len).contains(&ip))
        .map(|(_, _, range)| *range)
}

/// The IPv4 address an IPv6 address embeds (mapped, NAT64 or 6to4), if any.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    EMBEDDING.iter().find_map(|(prefix, len, offset)| {
        v6_net(*prefix, *len)
            .contains(&ip)
            .then(|| Ipv4Addr::from((bits >> (96 - offset)) as u32))
    })
}

/// An IPv4-mapped IPv6 address or range as the IPv4 one, as deno's
/// permission checks see it.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// [`normalize`] for a range: `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
pub fn normalize_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => v4_net(v4, v6.prefix_len() - 96).into(),
            None => net,
        },
        net => net.trunc(),
    }
}

/// Every reserved range as CIDR, the IPv6 forms that embed a reserved IPv4
/// range included.
pub fn reserved_nets() -> Vec<(IpNet, ReservedRange)> {
    let mut nets: Vec<(IpNet, ReservedRange)> = Vec::new();
    for (net, len, range) in V4 {
        nets.push((v4_net(*net, *len).into(), *range));
    }
    for (net, len, range) in V6 {
        nets.push((v6_net(*net, *len).into(), *range));
    }
    for (prefix, prefix_len, offset) in EMBEDDING {
        for (net, len, range) in V4 {
            let bits = u128::from(*prefix) | (u128::from(u32::from(*net)) << (96 - offset));
            nets.push((v6_net(Ipv6Addr::from(bits), offset + len).into(), *range));
            debug_assert!(offset >= prefix_len);
        }
    }
    nets
}

/// `nets` with every address in `holes` taken out, as the fewest CIDR
/// ranges that splitting at prefix boundaries gives.
pub fn subtract(nets: &[IpNet], holes: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for net in nets {
        carve(*net, holes, &mut out);
    }
    out
}

/// Every address not in `nets` (both families), as CIDR ranges.
pub fn complement(nets: &[IpNet]) -> Vec<IpNet> {
    subtract(
        &[
            v4_net(Ipv4Addr::UNSPECIFIED, 0).into(),
            v6_net(Ipv6Addr::UNSPECIFIED, 0).into(),
        ],
        nets,
    )
}

fn carve(net: IpNet, holes: &[IpNet], out: &mut Vec<IpNet>) {
    // Two CIDR ranges are disjoint or one contains the other.
    if holes.iter().any(|hole| hole.contains(&net)) {
        return;
    }
    if !holes.iter().any(|hole| net.contains(hole)) {
        out.push(net);
        return;
    }
    // Some hole lies strictly inside `net`, so `net` is not a single
    // address and has two halves.
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for half in halves {
            carve(half, holes, out);
        }
    }
}

fn v4_net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    // Every length used here is at most 32.
    Ipv4Net::new(addr, len.min(32))
        .unwrap_or_else(|_| Ipv4Net::from(addr))
        .trunc()
}

fn v6_net(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    // Every length used here is at most 128.
    Ipv6Net::new(addr, len.min(128))
        .unwrap_or_else(|_| Ipv6Net::from(addr))
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<ReservedRange> {
        classify(text.parse().unwrap())
    }

    #[test]
    fn every_reserved_range_is_named() {
        use ReservedRange::*;
        let cases: &[(&str, Option<ReservedRange>)] = &[
            // Unspecified and "this network".
            ("0.0.0.0", Some(Unspecified)),
            ("0.255.255.255", Some(Unspecified)),
            ("::", Some(Unspecified)),
            // Loopback in every spelling.
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("2002:7f00:1::", Some(Loopback)),
            // RFC 1918 and its edges.
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.168.0.1", Some(Private)),
            ("192.169.0.0", None),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:192.168.1.1", Some(Private)),
            ("64:ff9b::a00:1", Some(Private)),
            // Carrier-grade NAT.
            ("100.64.0.0", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("100.100.100.200", Some(SharedAddressSpace)),
            // Link-local and cloud metadata.
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.0.0", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::1", Some(LinkLocal)),
            // Unique-local, including AWS's IPv6 metadata address.
            ("fd00::1", Some(UniqueLocal)),
            ("fc00::", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(UniqueLocal)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(UniqueLocal)),
            ("fe00::", None),
            // Multicast and broadcast.
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            // Documentation, benchmarking, the rest.
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.0", None),
            ("192.0.0.8", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("::7f00:1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            ("fec0::1", Some(Reserved)),
            // Public addresses, in every family and embedding.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("223.255.255.255", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("2002:808:808::1", None),
            ("2001::1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(class(text), *expected, "{text}");
        }
    }

    /// A deterministic spread of addresses: every range's edges and their
    /// neighbours, plus pseudo-random ones.
    fn samples() -> Vec<IpAddr> {
        let mut out = Vec::new();
        for (net, _) in reserved_nets() {
            match net {
                IpNet::V4(n) => {
                    let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                    for v in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                        out.push(IpAddr::V4(v.into()));
                    }
                }
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    for v in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                        out.push(IpAddr::V6(v.into()));
                    }
                }
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(IpAddr::V4((state as u32).into()));
            let high = u128::from(state) << 64;
            out.push(IpAddr::V6((high | u128::from(state.rotate_left(7))).into()));
        }
        out
    }

    #[test]
    fn the_ranges_and_the_classifier_agree() {
        let nets: Vec<IpNet> = reserved_nets().into_iter().map(|(n, _)| n).collect();
        for ip in samples() {
            let listed = nets.iter().any(|n| n.contains(&ip));
            assert_eq!(listed, classify(ip).is_some(), "{ip}");
        }
    }

    #[test]
    fn the_complement_is_exactly_the_public_addresses() {
        let nets: Vec<IpNet> = reserved_nets().into_iter().map(|(n, _)| n).collect();
        let public = complement(&nets);
        for ip in samples() {
            let in_public = public.iter().any(|n| n.contains(&ip));
            assert_eq!(in_public, classify(ip).is_none(), "{ip}");
        }
        // Disjoint from every reserved range.
        for p in &public {
            assert!(!nets.iter().any(|n| n.contains(p) || p.contains(n)), "{p}");
        }
    }

    #[test]
    fn subtracting_leaves_the_rest_of_a_range() {
        let net: IpNet = "127.0.0.0/8".parse().unwrap();
        let hole: IpNet = "127.0.0.1/32".parse().unwrap();
        let rest = subtract(&[net], &[hole]);
        assert_eq!(rest.len(), 24);
        let contains = |ip: &str| {
            rest.iter()
                .any(|n| n.contains(&ip.parse::<IpAddr>().unwrap()))
        };
        assert!(!contains("127.0.0.1"));
        assert!(contains("127.0.0.0"));
        assert!(contains("127.0.0.2"));
        assert!(contains("127.255.255.255"));
        // A hole that covers the whole range leaves nothing; an unrelated
        // one leaves it whole.
        assert!(subtract(&[hole], &[net]).is_empty());
        assert_eq!(
            subtract(&[net], &["10.0.0.0/8".parse().unwrap()]),
            vec![net]
        );
    }

    #[test]
    fn mapped_ranges_normalise_to_ipv4() {
        assert_eq!(
            normalize_net("::ffff:10.0.0.0/104".parse().unwrap()),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            normalize("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            normalize_net("10.1.2.3/16".parse().unwrap()),
            "10.1.0.0/16".parse::<IpNet>().unwrap()
        );
    }
}
