//! `[upstream]` (the engine's and the HTTP client's settings),
//! `[[registry]]` and `[[credentials]]`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use cache_core::CacheOptions;
use cache_upstream::{ClientOptions, CredentialSet, Credentials, RegistryConfig};

use super::storage::take;
use super::{ConfigError, err, load};

/// The engine's keys in `[upstream]`.
const ENGINE_KEYS: &[&str] = &[
    "max_concurrent_fetches",
    "max_queued_fetches",
    "max_retries",
    "retry_backoff",
    "stall_timeout",
    "manifest_timeout",
    "revalidate_window",
];

/// The HTTP client's keys in `[upstream]`.
const CLIENT_KEYS: &[&str] = &["connect_timeout", "response_timeout"];

/// The engine's options from its keys in `[upstream]`, `[storage]` and
/// `[server]`, each part checked under its own section (so an error names
/// it, and a key in the wrong section is refused by that section); and
/// the HTTP client's, which read bodies with the engine's stall timeout
/// and take manifests up to the engine's size.
pub(super) fn options(
    mut upstream: toml::Table,
    storage: toml::Table,
    server: toml::Table,
) -> Result<(CacheOptions, ClientOptions), ConfigError> {
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

/// One `[[registry]]`, ready to connect.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// As configured.
    pub config: RegistryConfig,
    /// Its client options (its certificate files read).
    pub options: ClientOptions,
    /// Its own credentials (the password read).
    pub credentials: Option<Credentials>,
}

pub(super) fn registries(
    raw: Vec<RegistryConfig>,
    client: &ClientOptions,
    base: &Path,
) -> Result<Vec<Upstream>, ConfigError> {
    let mut out: Vec<Upstream> = Vec::with_capacity(raw.len());
    for (i, mut config) in raw.into_iter().enumerate() {
        let key = format!("registry[{i}] (host = {:?})", config.host.as_str());
        if out.iter().any(|u| u.config.host == config.host) {
            return err(format!("{key}: host appears twice"));
        }
        config.rebase(base);
        let bad = |e: ConfigError| ConfigError::new(format!("{key}: {e}"));
        out.push(Upstream {
            options: config.options(client).map_err(bad)?,
            credentials: config.credentials().map_err(bad)?,
            config,
        });
    }
    Ok(out)
}

pub(super) fn credential_sets(
    raw: Vec<CredentialSet>,
    base: &Path,
) -> Result<HashMap<String, Credentials>, ConfigError> {
    let mut out = HashMap::with_capacity(raw.len());
    for (i, mut c) in raw.into_iter().enumerate() {
        let key = format!("credentials[{i}] (name = {:?})", c.name);
        c.rebase(base);
        let creds = c
            .credentials()
            .map_err(|e| ConfigError::new(format!("{key}: {e}")))?;
        if out.insert(c.name, creds).is_some() {
            return err(format!("{key}: the name is used twice"));
        }
    }
    Ok(out)
}
