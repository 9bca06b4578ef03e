//! Network permissions for outbound `fetch`.
//!
//! deno_fetch checks every resolved address of every connection (redirects
//! included) against the `PermissionsContainer` in the isolate's `OpState`,
//! and dials only the checked address. isopod configures that container
//! rather than re-implementing the check.

use std::sync::Arc;

use deno_permissions::{
    Permissions, PermissionsContainer, PermissionsOptions, RuntimePermissionDescriptorParser,
};

/// Which hosts outbound `fetch` may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetPolicy {
    /// Any host. The default of `isopod run`, for local development.
    #[default]
    AllowAll,
    /// Only these hosts, in deno's `--allow-net` syntax (`host`,
    /// `host:port`, an IP address or a CIDR range).
    AllowList(Vec<String>),
}

/// A network policy that deno's permission parser rejected.
#[derive(Debug, thiserror::Error)]
#[error("invalid network policy: {0}")]
pub struct PermissionError(String);

impl NetPolicy {
    /// The permissions container that enforces this policy.
    pub(crate) fn permissions_container(&self) -> Result<PermissionsContainer, PermissionError> {
        let parser = Arc::new(RuntimePermissionDescriptorParser::new(
            sys_traits::impls::RealSys,
        ));
        let allow_net = match self {
            NetPolicy::AllowAll => Some(Vec::new()),
            NetPolicy::AllowList(hosts) => Some(hosts.clone()),
        };
        let options = PermissionsOptions {
            allow_net,
            prompt: false,
            ..Default::default()
        };
        let permissions = Permissions::from_options(parser.as_ref(), &options)
            .map_err(|e| PermissionError(e.to_string()))?;
        Ok(PermissionsContainer::new(parser, permissions))
    }
}
