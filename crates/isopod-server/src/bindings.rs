//! An app's storage bindings as declared (`kv`, `d1` in its settings),
//! checked and opened in the server's [`Storage`].
//!
//! Invariants: a binding's name is a JavaScript identifier, unique among
//! the app's bindings, variables and secrets (they share `env`); a name of
//! a namespace or database is the storage's to check (it refuses anything
//! that could leave its directory); apps naming the same namespace or
//! database share it.

use std::collections::BTreeSet;

use isopod_bindings::{Binding, BindingTarget, Bindings};
use isopod_store::kv::KvBackend;
use isopod_store::Storage;

use crate::manifest::{AppSettings, KvBackendName};

/// `settings`' bindings, opened in `storage`; a reason when they cannot be.
pub(crate) fn resolve(
    settings: &AppSettings,
    storage: Option<&Storage>,
) -> Result<Bindings, String> {
    if settings.kv.is_empty() && settings.d1.is_empty() {
        return Ok(Bindings::default());
    }
    let storage = storage.ok_or(
        "KV and D1 bindings need a data directory (`data_dir` in the config, or --data-dir)",
    )?;
    let mut taken: BTreeSet<String> = settings
        .vars
        .keys()
        .chain(settings.secrets.keys())
        .cloned()
        .collect();
    let mut claim = |name: &str| -> Result<(), String> {
        if !is_identifier(name) {
            return Err(format!(
                "binding '{name}' is not a JavaScript identifier (letters, digits, '_', '$'; not a digit first)"
            ));
        }
        if !taken.insert(name.to_string()) {
            return Err(format!("'{name}' is bound twice on env"));
        }
        Ok(())
    };
    let mut entries = Vec::new();
    for spec in &settings.kv {
        claim(&spec.binding)?;
        let namespace = spec.namespace.as_deref().unwrap_or(&spec.binding);
        let backend = match spec.backend {
            None | Some(KvBackendName::Sqlite) => KvBackend::Sqlite,
            Some(KvBackendName::Redis) => KvBackend::Redis,
        };
        let opened = storage
            .kv_namespace(namespace, backend)
            .map_err(|e| format!("KV binding '{}': {e}", spec.binding))?;
        entries.push(Binding {
            name: spec.binding.clone(),
            target: BindingTarget::Kv(opened),
        });
    }
    for spec in &settings.d1 {
        claim(&spec.binding)?;
        let database = spec.database.as_deref().unwrap_or(&spec.binding);
        let opened = storage
            .d1_database(database)
            .map_err(|e| format!("D1 binding '{}': {e}", spec.binding))?;
        entries.push(Binding {
            name: spec.binding.clone(),
            target: BindingTarget::D1(opened),
        });
    }
    Ok(Bindings::new(entries))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}
