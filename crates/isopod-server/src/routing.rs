//! Routes: which app a request is for.
//!
//! A route matches on host (exact, or a `*.` wildcard for any subdomain)
//! and/or path prefix (whole segments: `/api` matches `/api` and `/api/x`,
//! not `/apix`). When several match, the most specific wins: an exact host
//! beats a wildcard, which beats no host; a longer wildcard beats a shorter
//! one; then a longer path prefix wins. An app without routes answers on
//! `NAME.localhost`.

use std::sync::Arc;

/// The host part of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host exactly (case-insensitive, port ignored).
    Exact(String),
    /// Any subdomain of this suffix: `*.example.com` matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `host` or `*.suffix`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(suffix) = text.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("invalid wildcard host '{text}'"));
            }
            return Ok(HostPattern::Wildcard(format!(".{suffix}")));
        }
        if text.is_empty() || text.contains('*') || text.contains('/') {
            return Err(format!("invalid host '{text}'"));
        }
        Ok(HostPattern::Exact(text))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(exact) => (2, exact.len()),
            HostPattern::Wildcard(suffix) => (1, suffix.len()),
        }
    }
}

/// One route of one app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The host to match; `None` matches any.
    pub host: Option<HostPattern>,
    /// The path prefix to match; `None` matches any.
    pub path: Option<String>,
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(host))
            && self
                .path
                .as_deref()
                .is_none_or(|prefix| path_has_prefix(path, prefix))
    }

    fn specificity(&self) -> ((u8, usize), usize) {
        (
            self.host.as_ref().map_or((0, 0), HostPattern::rank),
            self.path.as_ref().map_or(0, String::len),
        )
    }
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
}

/// Every app's routes, for lookups.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    entries: Vec<(Route, Arc<str>)>,
}

impl RouteTable {
    /// Adds `app`'s routes; none means `NAME.localhost`.
    pub fn add(&mut self, app: &Arc<str>, routes: &[Route]) {
        if routes.is_empty() {
            let host = HostPattern::Exact(format!("{}.localhost", app.to_ascii_lowercase()));
            self.entries.push((
                Route {
                    host: Some(host),
                    path: None,
                },
                app.clone(),
            ));
        }
        for route in routes {
            self.entries.push((route.clone(), app.clone()));
        }
    }

    /// The app for a request to `host` (port ignored) and `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<str>> {
        let host = host_without_port(host);
        // Hosts usually arrive in lower case already: no copy then.
        let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        self.entries
            .iter()
            .filter(|(route, _)| route.matches(&host, path))
            .max_by_key(|(route, _)| route.specificity())
            .map(|(_, app)| app)
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: Option<&str>) -> Route {
        Route {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path: path.map(str::to_string),
        }
    }

    fn table() -> RouteTable {
        let mut table = RouteTable::default();
        table.add(&"exact".into(), &[route(Some("api.example.com"), None)]);
        table.add(&"wild".into(), &[route(Some("*.example.com"), None)]);
        table.add(&"deep".into(), &[route(Some("*.eu.example.com"), None)]);
        table.add(
            &"api-path".into(),
            &[route(Some("api.example.com"), Some("/v2"))],
        );
        table.add(&"any-path".into(), &[route(None, Some("/static"))]);
        table.add(&"plain".into(), &[]);
        table
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table();
        let app = |host: &str, path: &str| t.lookup(host, path).map(|a| a.to_string());
        assert_eq!(app("api.example.com", "/"), Some("exact".into()));
        assert_eq!(
            app("API.example.com:8080", "/v2/users"),
            Some("api-path".into())
        );
        assert_eq!(app("api.example.com", "/v2x"), Some("exact".into()));
        assert_eq!(app("www.example.com", "/"), Some("wild".into()));
        assert_eq!(app("a.eu.example.com", "/"), Some("deep".into()));
        assert_eq!(app("example.com", "/"), None);
        assert_eq!(app("other.test", "/static/app.js"), Some("any-path".into()));
        assert_eq!(app("www.example.com", "/static/x"), Some("wild".into()));
        assert_eq!(app("plain.localhost:9000", "/"), Some("plain".into()));
        assert_eq!(app("[::1]:80", "/nothing"), None);
    }

    #[test]
    fn hosts_are_validated() {
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a*.b").is_err());
        assert!(HostPattern::parse("").is_err());
        assert_eq!(
            HostPattern::parse("*.A.com").unwrap(),
            HostPattern::Wildcard(".a.com".into())
        );
    }
}
