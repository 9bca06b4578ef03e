//! Where outbound `fetch` may go: public addresses, plus what an app's
//! `allow_net` lists; never isopod's own listeners.
//!
//! # How the policy is enforced
//!
//! deno_fetch already checks every connection against the
//! `PermissionsContainer` in the isolate's `OpState`, at two points:
//!
//! 1. *The URL check* (`check_net_url`, before each request and each
//!    redirect hop, which JavaScript follows through the same op): the URL's
//!    host and port against the container's allow **and** deny rules. Deny
//!    does not simply beat allow here: the rules are kept sorted
//!    (port-specific rules first, then by host kind: name, `*.name`, IP,
//!    CIDR; a deny before an allow for the very same host and port) and the
//!    first that matches decides, so `allow 127.0.0.1:9000` beats
//!    `deny 127.0.0.0/8`. With no global grant, a host that no rule matches
//!    is refused.
//! 2. *The resolved-address check* (`check_net_resolved`, in the
//!    connector): every address the host resolved to (or the IP literal),
//!    with the port, against the **deny rules only**: here deny always wins.
//!    IPv4-mapped IPv6 is normalised to IPv4 first (NAT64 and 6to4 forms are
//!    not, so [`crate::address`] lists them as ranges of their own). The
//!    connection then goes to exactly the addresses checked, so a DNS answer
//!    cannot change in between.
//!
//! Deny rules match an address or CIDR range on one port or on all. So
//! "deny loopback except `127.0.0.1:9000`" cannot be written as deny rules
//! for the resolved-address check: the exception would need a deny rule for
//! each of the other 65 534 ports, scanned on every connection. Nor can a
//! deny rule make way for a name whose addresses are not known until it is
//! resolved. isopod therefore splits the work, and keeps deno's connector:
//!
//! - **Deny rules** (both checks): isopod's own listeners, on their ports,
//!   always; and every reserved range (see [`crate::address`], plus this
//!   machine's own addresses) *minus* the ranges the app's IP entries name,
//!   computed by splitting CIDR ranges around them. When `allow_net` names a
//!   host by name, no reserved range is a deny rule, since the name may
//!   resolve anywhere in them; the resolver below then decides for names.
//! - **Allow rules** (URL check): every host name (a `*.` rule on the DNS
//!   root, which deno's own parser cannot spell), every public address (the
//!   complement of the reserved ranges, as CIDR ranges), and the app's
//!   entries with their ports. (IPv6 ranges are parsed here: deno's list
//!   syntax has no spelling for them.) An IP literal in a reserved range that no
//!   entry admits on that port matches nothing and is refused; this is what
//!   holds `127.0.0.1:9000` to port 9000. A name entry with ports
//!   (`api.internal:8443`) also adds a port-less deny rule for the name,
//!   which sorts after the name's port rules, so the name is refused on
//!   other ports.
//! - **The resolver** (deno_fetch's `Options.resolver`, for host names
//!   only): a name that `allow_net` lists resolves anywhere. Any other name
//!   is refused when it resolves to a reserved address that no port-less IP
//!   entry admits and that the deny rules do not already refuse; it cannot
//!   see the port, so a name never inherits an `ip:port` entry. Addresses
//!   the deny rules cover are passed through for deno's own check, which
//!   also runs when an (environment-configured) proxy makes the connection.
//!
//! A refused fetch rejects with a `TypeError` whose message the bootstrap
//! rewrites through [`op_isopod_fetch_refusal`] to say why.
//!
//! Limitation: with `HTTP_PROXY`/`HTTPS_PROXY` set in isopod's environment,
//! deno_fetch connects to the proxy, and a name the resolver refuses is
//! left to the proxy (deno's destination check there is best effort).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use deno_core::{op2, OpState};
use deno_permissions::{
    Host, NetDescriptor, Permissions, PermissionsContainer, RuntimePermissionDescriptorParser,
};
use ipnet::IpNet;

use crate::address::{self, ReservedRange};

/// Which hosts outbound `fetch` may reach.
///
/// The default reaches public addresses only. [`NetPolicy::allowing`] adds
/// exceptions in deno's `--allow-net` syntax: `host`, `host:port`,
/// `*.domain`, an IP address, `ip:port`, `[v6]:port`, or a CIDR range
/// (`10.1.0.0/16`, `fd00::/8`). An entry with a port admits its host on
/// that port only. isopod's own listeners stay unreachable whatever the
/// entries say.
///
/// Compiling a policy (the permission container and its rules, some 800
/// of them, tens of KiB) happens once per distinct list of entries, not
/// once per app or per isolate: policies with equal entries share one
/// compiled form, so ten thousand apps on the default policy hold one.
#[derive(Clone, Default)]
pub struct NetPolicy {
    allow: Arc<[String]>,
    entries: Arc<[Entry]>,
    compiled: Arc<CompiledCache>,
}

/// A policy's compiled form and the [`OwnHost`] generation it was built for.
type CompiledCache = Mutex<Option<(u64, Arc<Compiled>)>>;

impl std::fmt::Debug for NetPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetPolicy")
            .field("allow", &self.allow)
            .finish()
    }
}

impl PartialEq for NetPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.allow == other.allow
    }
}

impl Eq for NetPolicy {}

/// An `allow_net` entry that isopod cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allow_net entry '{entry}': {reason}")]
pub struct PermissionError {
    entry: String,
    reason: String,
}

impl PermissionError {
    fn new(entry: &str, reason: impl Into<String>) -> PermissionError {
        PermissionError {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

/// One parsed `allow_net` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Entry {
    /// An address or CIDR range (IPv4-mapped forms normalised to IPv4).
    Range { net: IpNet, port: Option<u16> },
    /// A host name (lower case, no trailing dot), or a `*.domain` suffix,
    /// which also matches the domain itself (as deno's does).
    Name {
        name: String,
        wildcard: bool,
        port: Option<u16>,
        host: Host,
    },
}

impl NetPolicy {
    /// The default policy plus `entries`, each checked now so a bad one is
    /// refused when the config or manifest is read.
    pub fn allowing<I, S>(entries: I) -> Result<NetPolicy, PermissionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allow = Vec::new();
        let mut parsed = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            parsed.push(parse_entry(entry)?);
            allow.push(entry.to_string());
        }
        Ok(NetPolicy {
            allow: allow.into(),
            entries: parsed.into(),
            compiled: Default::default(),
        })
    }

    /// The `allow_net` entries, as given.
    pub fn allowed(&self) -> &[String] {
        &self.allow
    }

    /// The compiled policy, built on first use and again whenever isopod's
    /// own listeners or addresses changed since; shared with every policy
    /// that has the same entries.
    pub(crate) fn compiled(&self) -> Arc<Compiled> {
        let own = own_host();
        let mut cache = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, compiled)) = cache.as_ref() {
            if *generation == own.generation {
                return compiled.clone();
            }
        }
        let compiled = interned(&self.entries, &own);
        *cache = Some((own.generation, compiled.clone()));
        compiled
    }

    /// The permission container that enforces this policy; clones share
    /// one container (it is never mutated: nothing prompts).
    pub fn permissions_container(&self) -> PermissionsContainer {
        self.compiled().container.clone()
    }
}

/// The one compiled form of `entries` under `own`'s generation: found among
/// those some policy still holds, or built now.
fn interned(entries: &Arc<[Entry]>, own: &OwnHost) -> Arc<Compiled> {
    type Interned = HashMap<Arc<[Entry]>, (u64, Weak<Compiled>)>;
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut interned = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((generation, weak)) = interned.get(entries) {
        if *generation == own.generation {
            if let Some(compiled) = weak.upgrade() {
                return compiled;
            }
        }
    }
    let compiled = Arc::new(Compiled::new(entries, own));
    interned.retain(|_, (_, weak)| weak.strong_count() > 0);
    interned.insert(entries.clone(), (own.generation, Arc::downgrade(&compiled)));
    compiled
}

fn parse_entry(text: &str) -> Result<Entry, PermissionError> {
    if text.is_empty() {
        return Err(PermissionError::new(text, "empty"));
    }
    if text == "*" {
        return Err(PermissionError::new(
            text,
            "list hosts, addresses or ranges; '*' is not supported",
        ));
    }
    if text.contains('/') {
        // deno's list syntax has no IPv6 CIDR form, so ranges are parsed
        // here, for both families.
        let net: IpNet = text
            .parse()
            .map_err(|_| PermissionError::new(text, "not a CIDR range (a range takes no port)"))?;
        return Ok(Entry::Range {
            net: address::normalize_net(net),
            port: None,
        });
    }
    let NetDescriptor(host, port) = NetDescriptor::parse_for_list(text)
        .map_err(|e| PermissionError::new(text, e.to_string()))?;
    let port = match port {
        None => None,
        Some(0) => return Err(PermissionError::new(text, "port 0 is not a port")),
        Some(port) => {
            Some(u16::try_from(port).map_err(|_| PermissionError::new(text, "port out of range"))?)
        }
    };
    match host {
        Host::Ip(ip) => Ok(Entry::Range {
            net: IpNet::from(address::normalize(ip)),
            port,
        }),
        Host::IpSubnet(net) => Ok(Entry::Range {
            net: address::normalize_net(net),
            port,
        }),
        Host::Fqdn(ref fqdn) => Ok(Entry::Name {
            name: normalize_name(&fqdn.to_string()),
            wildcard: false,
            port,
            host,
        }),
        Host::FqdnWithSubdomainWildcard(ref fqdn) => {
            if port.is_some() {
                return Err(PermissionError::new(text, "a *.domain entry takes no port"));
            }
            Ok(Entry::Name {
                name: normalize_name(&fqdn.to_string()),
                wildcard: true,
                port,
                host,
            })
        }
        Host::Vsock(_) | Host::UnixSocket(_) => Err(PermissionError::new(
            text,
            "only host names, addresses and ranges are supported",
        )),
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why an address is not reachable by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Range(ReservedRange),
    /// One of this machine's own interface addresses.
    ThisHost,
}

impl Why {
    fn describe(self) -> &'static str {
        match self {
            Why::Range(range) => range.describe(),
            Why::ThisHost => "this machine's own addresses",
        }
    }
}

/// A policy turned into deno permission rules plus what the resolver and
/// the refusal messages need. Immutable once built.
pub(crate) struct Compiled {
    /// The rules, for deno_fetch (shared by every isolate on this policy).
    pub(crate) container: PermissionsContainer,
    /// Every reserved range and own address, with why.
    reserved: Vec<(IpNet, Why)>,
    /// The reserved ranges that are deny rules (both checks).
    static_deny: Vec<IpNet>,
    /// IP entries without a port: reachable by address, on every port.
    open_ranges: Vec<IpNet>,
    /// IP entries with a port.
    port_ranges: Vec<(IpNet, u16)>,
    /// Name entries: (name, wildcard, ports; empty means every port).
    names: Vec<(String, bool, Vec<u16>)>,
    /// isopod's own listeners: (address or range, port).
    listeners: Vec<(IpNet, u16)>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("static_deny", &self.static_deny.len())
            .field("open_ranges", &self.open_ranges)
            .field("port_ranges", &self.port_ranges)
            .field("names", &self.names)
            .finish()
    }
}

fn host_for(net: IpNet) -> Host {
    if net.prefix_len() == net.max_prefix_len() {
        Host::Ip(net.addr())
    } else {
        Host::IpSubnet(net)
    }
}

impl Compiled {
    fn new(entries: &[Entry], own: &OwnHost) -> Compiled {
        let mut reserved: Vec<(IpNet, Why)> = address::reserved_nets()
            .into_iter()
            .map(|(net, range)| (net, Why::Range(range)))
            .collect();
        for ip in &own.addresses {
            reserved.push((IpNet::from(*ip), Why::ThisHost));
        }
        let reserved_nets: Vec<IpNet> = reserved.iter().map(|(net, _)| *net).collect();

        let mut open_ranges = Vec::new();
        let mut port_ranges = Vec::new();
        let mut names: BTreeMap<(String, bool), (Host, Vec<u16>, bool)> = BTreeMap::new();
        for entry in entries {
            match entry {
                Entry::Range { net, port: None } => open_ranges.push(*net),
                Entry::Range {
                    net,
                    port: Some(port),
                } => port_ranges.push((*net, *port)),
                Entry::Name {
                    name,
                    wildcard,
                    port,
                    host,
                } => {
                    let slot = names
                        .entry((name.clone(), *wildcard))
                        .or_insert_with(|| (host.clone(), Vec::new(), false));
                    match port {
                        Some(port) => slot.1.push(*port),
                        None => slot.2 = true,
                    }
                }
            }
        }

        let carved: Vec<IpNet> = open_ranges
            .iter()
            .copied()
            .chain(port_ranges.iter().map(|(net, _)| *net))
            .collect();
        let static_deny = if names.is_empty() {
            address::subtract(&reserved_nets, &carved)
        } else {
            Vec::new()
        };
        let listeners: Vec<(IpNet, u16)> = own
            .listeners
            .iter()
            .flat_map(|listener| {
                listener_targets(*listener, &own.addresses)
                    .into_iter()
                    .map(move |net| (net, listener.port()))
            })
            .collect();

        // Allow rules: every name, every public address, the entries.
        let mut granted = vec![NetDescriptor(
            Host::FqdnWithSubdomainWildcard(fqdn::FQDN::default()),
            None,
        )];
        granted.extend(
            address::complement(&reserved_nets)
                .into_iter()
                .map(|net| NetDescriptor(host_for(net), None)),
        );
        granted.extend(
            open_ranges
                .iter()
                .map(|net| NetDescriptor(host_for(*net), None)),
        );
        granted.extend(
            port_ranges
                .iter()
                .map(|(net, port)| NetDescriptor(host_for(*net), Some(u32::from(*port)))),
        );
        // Deny rules: the reserved ranges left, the listeners, and the names
        // held to their ports.
        let mut denied: Vec<NetDescriptor> = static_deny
            .iter()
            .map(|net| NetDescriptor(host_for(*net), None))
            .collect();
        denied.extend(
            listeners
                .iter()
                .map(|(net, port)| NetDescriptor(host_for(*net), Some(u32::from(*port)))),
        );
        let mut name_rules = Vec::new();
        for ((name, wildcard), (host, ports, any_port)) in names {
            if any_port {
                name_rules.push((name, wildcard, Vec::new()));
                continue;
            }
            granted.extend(
                ports
                    .iter()
                    .map(|port| NetDescriptor(host.clone(), Some(u32::from(*port)))),
            );
            denied.push(NetDescriptor(host, None));
            name_rules.push((name, wildcard, ports));
        }

        let mut permissions = Permissions::none_without_prompt();
        // `Some(empty)` would mean "deny everything" to deno.
        let denied = (!denied.is_empty()).then_some(denied);
        permissions.net = Permissions::new_unary(Some(granted), denied, false);
        let parser = Arc::new(RuntimePermissionDescriptorParser::new(
            sys_traits::impls::RealSys,
        ));
        Compiled {
            container: PermissionsContainer::new(parser, permissions),
            reserved,
            static_deny,
            open_ranges,
            port_ranges,
            names: name_rules,
            listeners,
        }
    }

    /// Why `ip` is not reachable by default, if it is not public.
    fn why_reserved(&self, ip: IpAddr) -> Option<Why> {
        if let Some(range) = address::classify(ip) {
            return Some(Why::Range(range));
        }
        self.reserved
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, why)| *why)
    }

    fn name_listed(&self, name: &str) -> Option<&[u16]> {
        let name = normalize_name(name);
        self.names
            .iter()
            .find(|(listed, wildcard, _)| {
                name == *listed
                    || (*wildcard
                        && name.len() > listed.len()
                        && name.ends_with(listed.as_str())
                        && name.as_bytes()[name.len() - listed.len() - 1] == b'.')
            })
            .map(|(_, _, ports)| ports.as_slice())
    }

    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners
            .iter()
            .any(|(net, listener_port)| *listener_port == port && net.contains(&ip))
    }

    /// Decides a host name the resolver turned into `addresses`: refused
    /// if any address must be refused and deno's deny rules would not do
    /// it themselves.
    pub(crate) fn screen(
        &self,
        name: &str,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), Refusal> {
        if self.name_listed(name).is_some() {
            return Ok(());
        }
        for ip in addresses {
            let ip = address::normalize(ip);
            if self.static_deny.iter().any(|net| net.contains(&ip)) {
                continue;
            }
            let Some(why) = self.why_reserved(ip) else {
                continue;
            };
            if self.open_ranges.iter().any(|net| net.contains(&ip)) {
                continue;
            }
            return Err(Refusal {
                name: name.to_string(),
                ip,
                reason: self.explain_address(ip, None, Some(why)),
            });
        }
        Ok(())
    }

    /// Why `ip` (on `port`, when known) is refused, for a message.
    fn explain_address(&self, ip: IpAddr, port: Option<u16>, why: Option<Why>) -> String {
        let ip = address::normalize(ip);
        if port.is_some_and(|port| self.is_own_listener(ip, port)) {
            return "isopod's own listeners are not reachable from isopod apps".to_string();
        }
        let Some(why) = why.or_else(|| self.why_reserved(ip)) else {
            return "the app's allow_net does not admit it".to_string();
        };
        let mut reason = format!("{} are not reachable from isopod apps", why.describe());
        let ports: Vec<String> = self
            .port_ranges
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .map(|(_, port)| port.to_string())
            .collect();
        if !ports.is_empty() {
            reason.push_str(&format!(
                " (allow_net admits {ip} only on port {}, and only by address)",
                ports.join(", ")
            ));
        } else {
            reason.push_str(" unless allow_net lists them");
        }
        reason
    }

    fn explain_name(&self, name: &str) -> String {
        match self.name_listed(name) {
            Some(ports) if !ports.is_empty() => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("allow_net admits {name} only on port {}", ports.join(", "))
            }
            _ => "the app's allow_net does not admit it".to_string(),
        }
    }

    /// The message a tenant sees for a refused fetch, given the text of
    /// the error deno produced; `None` when the error is not a refusal.
    ///
    /// Two shapes are recognised: deno's permission error
    /// (`Requires net access to "HOST:PORT"`, from the URL check or, inside
    /// a connection error, from the resolved-address check) and the
    /// resolver's own refusal ([`REFUSAL_MARKER`]). A connection error
    /// names the URL (`… for url (URL): …`), which gives the target.
    pub(crate) fn refusal_message(&self, text: &str) -> Option<String> {
        let url = text
            .split_once("for url (")
            .and_then(|(_, rest)| rest.split_once("): "))
            .and_then(|(url, _)| deno_core::url::Url::parse(url).ok());
        let url_target = url.as_ref().and_then(|url| {
            Some((
                url.host_str()?.to_string(),
                url.port_or_known_default()?,
                matches!(url.host(), Some(deno_core::url::Host::Domain(_))),
            ))
        });
        if let Some((_, reason)) = text.split_once(REFUSAL_MARKER) {
            let reason = reason.lines().next().unwrap_or_default();
            let target = match &url_target {
                Some((host, port, _)) => format!("{host}:{port}"),
                None => reason.split(' ').next().unwrap_or_default().to_string(),
            };
            return Some(format!("fetch to {target} refused: {reason}"));
        }
        let (_, rest) = text.split_once("Requires net access to \"")?;
        let (descriptor, _) = rest.split_once('"')?;
        let (host, port) = split_host_port(descriptor)?;
        let reason = match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => {
                let reason = self.explain_address(ip, port, None);
                match &url_target {
                    Some((name, _, true)) => format!("{name} resolved to {ip}; {reason}"),
                    _ => reason,
                }
            }
            Err(_) => self.explain_name(host),
        };
        let target = match &url_target {
            Some((host, port, _)) => format!("{host}:{port}"),
            None => descriptor.to_string(),
        };
        Some(format!("fetch to {target} refused: {reason}"))
    }
}

/// `host:port`, `[v6]:port` or a bare host.
fn split_host_port(descriptor: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = descriptor.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((ip, port));
    }
    match descriptor.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok())),
        None => Some((descriptor, None)),
    }
}

/// Marks the resolver's refusals inside deno's connection error text.
pub(crate) const REFUSAL_MARKER: &str = "isopod refused: ";

/// A host name refused by the resolver.
#[derive(Debug)]
pub(crate) struct Refusal {
    name: String,
    ip: IpAddr,
    reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{REFUSAL_MARKER}{} resolved to {}; {}",
            self.name, self.ip, self.reason
        )
    }
}

impl std::error::Error for Refusal {}

/// The resolver deno_fetch uses for a policy: the system's (getaddrinfo,
/// on tokio's blocking pool), then [`Compiled::screen`].
pub(crate) struct PolicyResolver(pub(crate) Arc<Compiled>);

impl std::fmt::Debug for PolicyResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PolicyResolver").field(&self.0).finish()
    }
}

impl deno_fetch::dns::Resolve for PolicyResolver {
    fn resolve(
        &self,
        name: hyper_util::client::legacy::connect::dns::Name,
    ) -> deno_fetch::dns::Resolving {
        let compiled = self.0.clone();
        Box::pin(async move {
            let host = name.as_str();
            // RFC 6761: `localhost` and every name under it are loopback,
            // whatever DNS would say; they are never looked up, so asking
            // sends no packet.
            let addresses: Vec<SocketAddr> = if is_localhost_name(host) {
                vec![
                    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
                ]
            } else {
                tokio::net::lookup_host((host, 0)).await?.collect()
            };
            compiled
                .screen(host, addresses.iter().map(SocketAddr::ip))
                .map_err(|refusal| io::Error::new(io::ErrorKind::PermissionDenied, refusal))?;
            Ok(addresses.into_iter())
        })
    }
}

/// `localhost` or a name under it (`app.localhost`), in any case, with or
/// without the root's trailing dot.
fn is_localhost_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Rewrites the text of a failed fetch's error into the reason it was
/// refused; `null` when it was not refused. Called by the bootstrap's
/// `fetch` wrapper and its `NotCapable` error builder.
#[op2]
#[string]
pub(crate) fn op_isopod_fetch_refusal(state: &OpState, #[string] text: &str) -> Option<String> {
    state.try_borrow::<Arc<Compiled>>()?.refusal_message(text)
}

/// Where isopod's own listener `listener` can be reached: its address, and
/// for a wildcard or loopback listener every loopback and unspecified
/// form, and for a wildcard one every interface address too.
fn listener_targets(listener: SocketAddr, own_addresses: &[IpAddr]) -> Vec<IpNet> {
    let ip = address::normalize(listener.ip());
    let mut nets = vec![IpNet::from(ip)];
    if ip.is_unspecified() || ip.is_loopback() {
        for text in [
            "127.0.0.0/8",
            "127.0.0.1/32",
            "::1/128",
            "0.0.0.0/32",
            "::/128",
        ] {
            if let Ok(net) = text.parse() {
                nets.push(net);
            }
        }
        if ip.is_unspecified() {
            nets.extend(own_addresses.iter().map(|ip| IpNet::from(*ip)));
        }
    }
    nets.sort();
    nets.dedup();
    nets
}

/// isopod's own listeners and this machine's interface addresses, as last
/// registered; `generation` changes with every registration.
#[derive(Debug, Clone, Default)]
struct OwnHost {
    listeners: Vec<SocketAddr>,
    addresses: Vec<IpAddr>,
    generation: u64,
}

fn own_host_cell() -> &'static RwLock<OwnHost> {
    static OWN: OnceLock<RwLock<OwnHost>> = OnceLock::new();
    OWN.get_or_init(|| {
        RwLock::new(OwnHost {
            listeners: Vec::new(),
            addresses: interface_addresses(),
            generation: 0,
        })
    })
}

fn own_host() -> OwnHost {
    own_host_cell()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Makes `listeners` (isopod's own listen addresses, port included)
/// unreachable from every app, whatever its `allow_net` says, and re-reads
/// this machine's interface addresses (unreachable unless listed).
///
/// Process-wide and additive. Call it once the listeners are bound and
/// before apps serve: policies compiled earlier are rebuilt on their next
/// use (each isolate takes its policy when its bundle is loaded).
pub fn deny_own_listeners(listeners: &[SocketAddr]) {
    let addresses = interface_addresses();
    let mut own = own_host_cell().write().unwrap_or_else(|e| e.into_inner());
    for listener in listeners {
        if !own.listeners.contains(listener) {
            own.listeners.push(*listener);
        }
    }
    own.addresses = addresses;
    own.generation += 1;
}

/// This machine's interface addresses (IPv4-mapped ones as IPv4), from
/// `getifaddrs`; empty if it fails.
fn interface_addresses() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success getifaddrs stores a
    // list that is freed below, exactly once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family
            // says which larger struct it is; each is read as that struct.
            let ip = unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if let Some(ip) = ip {
                addresses.push(address::normalize(ip));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once;
    // no reference into the list outlives this point.
    unsafe { libc::freeifaddrs(head) };
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use deno_core::url::Url;

    fn policy(entries: &[&str]) -> Arc<Compiled> {
        NetPolicy::allowing(entries).unwrap().compiled()
    }

    /// The URL check, as `op_fetch` runs it before each request and hop.
    fn url_ok(compiled: &Compiled, url: &str) -> bool {
        compiled
            .container
            .clone()
            .check_net_url(&Url::parse(url).unwrap(), "fetch()")
            .is_ok()
    }

    /// The resolved-address check, as the connector runs it on every
    /// address (and on an IP literal) before connecting.
    fn resolved_ok(compiled: &Compiled, ip: &str, port: u16) -> bool {
        compiled
            .container
            .clone()
            .check_net_resolved(&ip.parse().unwrap(), port, "fetch()")
            .is_ok()
    }

    /// Whether a connection to `ip:port` would be made: both checks, and the
    /// resolver for a name.
    fn reachable(compiled: &Compiled, url: &str, resolved: &[&str]) -> bool {
        let parsed = Url::parse(url).unwrap();
        let port = parsed.port_or_known_default().unwrap();
        if !url_ok(compiled, url) {
            return false;
        }
        if let Some(deno_core::url::Host::Domain(name)) = parsed.host() {
            let ips = resolved.iter().map(|ip| ip.parse::<IpAddr>().unwrap());
            if compiled.screen(name, ips).is_err() {
                return false;
            }
        }
        resolved.iter().all(|ip| resolved_ok(compiled, ip, port))
    }

    const RESERVED: &[&str] = &[
        "127.0.0.1",
        "127.0.0.53",
        "0.0.0.0",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.169.254",
        "169.254.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ];

    fn literal(ip: &str, port: u16) -> String {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
        }
    }

    #[test]
    fn by_default_every_reserved_address_is_refused_by_both_checks() {
        let compiled = policy(&[]);
        for ip in RESERVED {
            assert!(!resolved_ok(&compiled, ip, 80), "resolved {ip}");
            assert!(!url_ok(&compiled, &literal(ip, 80)), "url {ip}");
            // A name that resolves there is refused too.
            assert!(
                !reachable(&compiled, "http://rebind.example/", &[ip]),
                "name -> {ip}"
            );
        }
        // Public addresses and names pass (checked, never connected to).
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(resolved_ok(&compiled, ip, 443), "{ip}");
            assert!(url_ok(&compiled, &literal(ip, 443)), "{ip}");
        }
        assert!(reachable(
            &compiled,
            "https://example.com/",
            &["93.184.216.34"]
        ));
        // One reserved address among public ones refuses the name.
        assert!(!reachable(
            &compiled,
            "https://example.com/",
            &["93.184.216.34", "10.0.0.1"]
        ));
    }

    #[test]
    fn urls_spell_loopback_many_ways_and_all_are_refused() {
        let compiled = policy(&[]);
        for url in [
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]/",
            "http://0.0.0.0:8080/",
        ] {
            assert!(!url_ok(&compiled, url), "{url}");
        }
    }

    #[test]
    fn a_cidr_entry_opens_its_range_on_every_port_and_nothing_else() {
        let compiled = policy(&["10.1.0.0/16", "fd00:1::/32"]);
        for (ip, open) in [
            ("10.1.2.3", true),
            ("10.1.255.255", true),
            ("::ffff:10.1.0.1", true),
            ("fd00:1::5", true),
            ("10.2.0.1", false),
            ("10.0.255.255", false),
            ("fd00:2::5", false),
            ("127.0.0.1", false),
            ("169.254.169.254", false),
        ] {
            for port in [80, 6379] {
                assert_eq!(
                    resolved_ok(&compiled, ip, port),
                    open,
                    "resolved {ip}:{port}"
                );
                assert_eq!(
                    url_ok(&compiled, &literal(ip, port)),
                    open,
                    "url {ip}:{port}"
                );
                assert_eq!(
                    reachable(&compiled, "http://db.example/", &[ip]),
                    open,
                    "name -> {ip}"
                );
            }
        }
    }

    #[test]
    fn an_address_with_a_port_opens_that_port_only_and_only_by_address() {
        let compiled = policy(&["127.0.0.1:9000"]);
        assert!(reachable(
            &compiled,
            "http://127.0.0.1:9000/",
            &["127.0.0.1"]
        ));
        assert!(reachable(
            &compiled,
            "http://[::ffff:127.0.0.1]:9000/",
            &["127.0.0.1"]
        ));
        assert!(!reachable(
            &compiled,
            "http://127.0.0.1:9001/",
            &["127.0.0.1"]
        ));
        assert!(!reachable(&compiled, "http://127.0.0.1/", &["127.0.0.1"]));
        assert!(!reachable(
            &compiled,
            "http://127.0.0.2:9000/",
            &["127.0.0.2"]
        ));
        assert!(!reachable(&compiled, "http://[::1]:9000/", &["::1"]));
        // A name that resolves to it may not use the exception, on any port.
        assert!(!reachable(
            &compiled,
            "http://localhost:9000/",
            &["127.0.0.1"]
        ));
        assert!(!reachable(
            &compiled,
            "http://localhost:22/",
            &["127.0.0.1"]
        ));
        // The rest of loopback stays denied by rule.
        assert!(!resolved_ok(&compiled, "127.0.0.2", 9000));
    }

    #[test]
    fn a_name_entry_reaches_what_the_name_resolves_to() {
        let compiled = policy(&["api.internal", "localhost:3000", "*.corp.example"]);
        assert!(reachable(
            &compiled,
            "http://api.internal:8080/",
            &["10.9.8.7"]
        ));
        assert!(reachable(
            &compiled,
            "http://localhost:3000/",
            &["127.0.0.1", "::1"]
        ));
        assert!(!reachable(
            &compiled,
            "http://localhost:3001/",
            &["127.0.0.1"]
        ));
        assert!(reachable(
            &compiled,
            "http://a.b.corp.example/",
            &["192.168.0.9"]
        ));
        assert!(reachable(
            &compiled,
            "http://corp.example/",
            &["192.168.0.9"]
        ));
        assert!(!reachable(
            &compiled,
            "http://notcorp.example/",
            &["192.168.0.9"]
        ));
        // Other names and literals stay refused.
        assert!(!reachable(&compiled, "http://evil.example/", &["10.9.8.7"]));
        assert!(!reachable(&compiled, "http://10.9.8.7/", &["10.9.8.7"]));
        assert!(!reachable(
            &compiled,
            "http://169.254.169.254/",
            &["169.254.169.254"]
        ));
        // Public names on any port.
        assert!(reachable(
            &compiled,
            "https://example.com:8443/",
            &["93.184.216.34"]
        ));
    }

    #[test]
    fn own_listeners_stay_refused_even_when_listed() {
        // A port no other test uses: registrations are process-wide.
        let listener: SocketAddr = "127.0.0.1:47913".parse().unwrap();
        deny_own_listeners(&[listener]);
        let compiled = policy(&["127.0.0.1", "localhost"]);
        assert!(!reachable(
            &compiled,
            "http://127.0.0.1:47913/",
            &["127.0.0.1"]
        ));
        assert!(!reachable(
            &compiled,
            "http://localhost:47913/",
            &["127.0.0.1"]
        ));
        assert!(reachable(
            &compiled,
            "http://127.0.0.1:47914/",
            &["127.0.0.1"]
        ));
        let wildcard: SocketAddr = "0.0.0.0:47915".parse().unwrap();
        deny_own_listeners(&[wildcard]);
        let compiled = policy(&["127.0.0.0/8"]);
        assert!(!reachable(
            &compiled,
            "http://127.0.0.9:47915/",
            &["127.0.0.9"]
        ));
        assert!(!reachable(&compiled, "http://0.0.0.0:47915/", &["0.0.0.0"]));
        assert_eq!(
            compiled.refusal_message("Requires net access to \"127.0.0.1:47915\", run again").as_deref(),
            Some("fetch to 127.0.0.1:47915 refused: isopod's own listeners are not reachable from isopod apps")
        );
    }

    #[test]
    fn entries_are_checked_when_read() {
        for bad in [
            "",
            "*",
            "http://example.com",
            "10.0.0.0/33",
            "10.0.0.0/8:80",
            "*.example.com:443",
            "example.com:0",
            "example.com:99999",
            "::1",
            "unix:/tmp/socket",
        ] {
            assert!(NetPolicy::allowing([bad]).is_err(), "{bad:?}");
        }
        let good = NetPolicy::allowing([
            "127.0.0.1:9000",
            "[::1]:9000",
            "10.1.0.0/16",
            "fd00::/8",
            "api.internal",
            "API.Internal:8443",
            "*.corp.example",
            "::ffff:10.0.0.0/104",
        ])
        .unwrap();
        assert_eq!(good.allowed().len(), 8);
        assert_eq!(
            good.entries[7],
            Entry::Range {
                net: "10.0.0.0/8".parse().unwrap(),
                port: None
            }
        );
    }

    #[test]
    fn refusals_say_why() {
        let compiled = policy(&["127.0.0.1:9000"]);
        let url_check =
            "Requires net access to \"127.0.0.1:9001\", run again with the --allow-net flag";
        assert_eq!(
            compiled.refusal_message(url_check).as_deref(),
            Some("fetch to 127.0.0.1:9001 refused: loopback addresses are not reachable from isopod apps (allow_net admits 127.0.0.1 only on port 9000, and only by address)")
        );
        let connect = "error sending request for url (http://rebind.example:8080/): client error (Connect): Requires net access to \"169.254.169.254:8080\", run again with the --allow-net flag";
        assert_eq!(
            compiled.refusal_message(connect).as_deref(),
            Some("fetch to rebind.example:8080 refused: rebind.example resolved to 169.254.169.254; link-local addresses (including cloud metadata services) are not reachable from isopod apps unless allow_net lists them")
        );
        let refusal = compiled
            .screen("localhost", ["127.0.0.1".parse().unwrap()])
            .unwrap_err()
            .to_string();
        let resolver = format!(
            "error sending request for url (http://localhost:9000/): client error (Connect): dns error: {refusal}"
        );
        assert_eq!(
            compiled.refusal_message(&resolver).as_deref(),
            Some("fetch to localhost:9000 refused: localhost resolved to 127.0.0.1; loopback addresses are not reachable from isopod apps (allow_net admits 127.0.0.1 only on port 9000, and only by address)")
        );
        let v6 = "Requires net access to \"[::1]:80\", run again";
        assert_eq!(
            policy(&[]).refusal_message(v6).as_deref(),
            Some("fetch to [::1]:80 refused: loopback addresses are not reachable from isopod apps unless allow_net lists them")
        );
        let named = policy(&["api.internal:8443"]);
        assert_eq!(
            named
                .refusal_message("Requires net access to \"api.internal:443\", run again")
                .as_deref(),
            Some("fetch to api.internal:443 refused: allow_net admits api.internal only on port 8443")
        );
        assert_eq!(compiled.refusal_message("connection reset by peer"), None);
    }

    /// Names under `localhost` never reach DNS: the resolver answers
    /// loopback itself (RFC 6761), and the connection check refuses that
    /// unless allowed. The names used here have no DNS record, so a lookup
    /// would have failed rather than answered loopback.
    #[tokio::test]
    async fn names_under_localhost_are_loopback_without_a_lookup() {
        use deno_fetch::dns::Resolve;
        use std::str::FromStr;
        type Name = hyper_util::client::legacy::connect::dns::Name;
        let compiled = policy(&[]);
        for host in [
            "localhost",
            "app.localhost",
            "A.B.LocalHost",
            "x.isopod-test.localhost.",
        ] {
            assert!(is_localhost_name(host), "{host}");
            let answered: Vec<IpAddr> = PolicyResolver(compiled.clone())
                .resolve(Name::from_str(host).unwrap())
                .await
                .unwrap_or_else(|error| panic!("{host}: {error}"))
                .map(|address| address.ip())
                .collect();
            assert_eq!(
                answered,
                [
                    "127.0.0.1".parse::<IpAddr>().unwrap(),
                    "::1".parse().unwrap()
                ],
                "{host}"
            );
            let url = format!("http://{host}/");
            assert!(!reachable(&compiled, &url, &["127.0.0.1", "::1"]), "{host}");
        }
        for host in ["localhost.example", "notlocalhost", "localhost-app.example"] {
            assert!(!is_localhost_name(host), "{host}");
        }
    }

    #[test]
    fn the_policy_is_compiled_once_and_shared() {
        let policy = NetPolicy::allowing(["10.0.0.0/8"]).unwrap();
        let clone = policy.clone();
        // Clones share one cache, and equal policies one compiled form. What
        // is compiled may be rebuilt when another test registers listeners
        // meanwhile, so a mismatch is retried a few times.
        assert!(Arc::ptr_eq(&policy.compiled, &clone.compiled));
        let shared = (0..20).any(|_| {
            let separate = NetPolicy::allowing(["10.0.0.0/8"]).unwrap();
            Arc::ptr_eq(&policy.compiled(), &separate.compiled())
        });
        assert!(shared);
        assert_eq!(policy, clone);
        assert_ne!(policy, NetPolicy::default());
    }
}
