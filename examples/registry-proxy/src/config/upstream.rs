//! `[upstream]` (the engine's and the HTTP client's settings),
//! `[[registry]]` and `[[credentials]]`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use cache_core::CacheOptions;
use cache_upstream::{ClientOptions, CredentialSet, Credentials, PreparedRegistry, RegistryConfig};

use super::storage::take;
use super::{Result, err, load, named};

/// The engine's keys in `[upstream]`.
const ENGINE_KEYS: &[&str] = &[
    "max_concurrent_fetches",
    "max_queued_fetches",
    "max_retries",
    "retry_backoff",
    "stall_timeout",
    "manifest_timeout",
    "revalidate_window",
    "cold_range_max",
    "cold_ranges_per_blob",
    "cold_ranges_per_registry",
];

/// The HTTP client's keys in `[upstream]`.
const CLIENT_KEYS: &[&str] = &["connect_timeout", "response_timeout"];

/// The engine's options from its keys in `[upstream]`, `[storage]` and
/// `[server]`, each part checked under its section (which refuses others'
/// keys); and the HTTP client's, with the engine's stall and size limits.
pub(super) fn options(
    mut upstream: toml::Table,
    storage: toml::Table,
    server: toml::Table,
) -> Result<(CacheOptions, ClientOptions)> {
    let engine = take(&mut upstream, ENGINE_KEYS);
    let client = take(&mut upstream, CLIENT_KEYS);
    if let Some(key) = upstream.keys().next() {
        let known = [ENGINE_KEYS, CLIENT_KEYS].concat().join("`, `");
        return err(format!(
            "upstream: unknown field `{key}`, expected one of `{known}`"
        ));
    }
    let mut all = toml::Table::new();
    for (section, part) in [
        ("upstream", engine),
        ("storage", storage),
        ("server", server),
    ] {
        load::section::<CacheOptions>(section, part.clone())?;
        all.extend(part);
    }
    // One name per process unless the file gives one, so a reload does not
    // see a new default name as a change.
    static NAME: OnceLock<String> = OnceLock::new();
    let name = NAME.get_or_init(|| CacheOptions::default().instance_name);
    all.entry("instance_name")
        .or_insert_with(|| name.clone().into());
    let cache: CacheOptions = load::section("upstream", all)?;
    let mut client: ClientOptions = load::section("upstream", client)?;
    client.read_timeout = cache.stall_timeout;
    client.max_manifest_size = cache.max_manifest_size;
    Ok((cache, client))
}

/// The registries, each with what it names read.
pub(super) fn registries(
    mut raw: Vec<RegistryConfig>,
    client: &ClientOptions,
    base: &Path,
) -> Result<Vec<PreparedRegistry>> {
    raw.iter_mut().for_each(|r| r.rebase(base));
    named(
        "registry",
        raw,
        |r| ("host", r.host.to_string()),
        |_, r| r.prepare(client),
    )
}

/// The credential sets by name, their passwords read.
pub(super) fn credential_sets(
    mut raw: Vec<CredentialSet>,
    base: &Path,
) -> Result<HashMap<String, Credentials>> {
    raw.iter_mut().for_each(|c| c.rebase(base));
    named(
        "credentials",
        raw,
        |c| ("name", c.name.clone()),
        |n, c| Ok((n, c.credentials()?)),
    )
}
