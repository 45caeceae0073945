//! `[storage]`: the store (`cache_store::StorageConfig`), the engine's
//! lease and access-time settings, peer streaming (`PeerConfig`), gc.

use std::path::Path;
use std::time::Duration;

use cache_core::config::{SizeText, at_least, bytes};
use cache_store::StorageConfig;
use serde::Deserialize;

use super::{ConfigError, Result, err, load};

/// The engine's keys in `[storage]`.
const ENGINE_KEYS: &[&str] = &["lease_ttl", "lease_wait", "instance_name", "touch_interval"];

/// Keys an object store alone shares between instances.
const SHARED_ONLY: &[&str] = &["lease_ttl", "lease_wait", "instance_name", "peer_listen"];

/// Takes `keys` out of `table`, into a table of their own.
pub(super) fn take(table: &mut toml::Table, keys: &[&str]) -> toml::Table {
    keys.iter()
        .filter_map(|k| table.remove(*k).map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// The gc keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGc {
    quota: Option<SizeText>,
    gc_interval: Option<String>,
}

/// `[storage]`, read; the engine's keys as a table, for `CacheOptions`.
pub(super) struct Section {
    pub(super) store: StorageConfig,
    pub(super) cache: toml::Table,
    pub(super) quota: Option<u64>,
    pub(super) gc_interval: Duration,
    pub(super) peer: Option<cache_core::peer::PeerConfig>,
}

pub(super) fn section(mut table: toml::Table, base: &Path) -> Result<Section> {
    let cache = take(&mut table, ENGINE_KEYS);
    let peer = take(&mut table, cache_core::peer::PeerConfig::KEYS);
    let shared = |k: &&&str| cache.contains_key(**k) || peer.contains_key(**k);
    let gc: RawGc = load::section("storage", take(&mut table, &["quota", "gc_interval"]))?;
    let mut store: StorageConfig = load::section("storage", table)?;
    store.rebase(base);
    if !store.shared()
        && let Some(key) = SHARED_ONLY.iter().find(shared)
    {
        return err(format!(
            "storage.{key} is for backend = \"object\", not \"{}\"",
            store.backend()
        ));
    }
    let (quota, gc_interval) = (|| {
        let s = Duration::from_secs;
        let every = at_least("gc_interval", &gc.gc_interval, s(600), s(1))?;
        Ok((gc.quota.map(|q| bytes("quota", &q)).transpose()?, every))
    })()
    .map_err(|e: ConfigError| e.at("storage"))?;
    let mut peer: Option<cache_core::peer::PeerConfig> = (!peer.is_empty())
        .then(|| load::section("storage", peer))
        .transpose()?;
    if let Some(tls) = peer.as_mut().and_then(|p| p.tls.as_mut()) {
        tls.rebase(base);
        // The client's configuration reads all three files (the CA, and
        // the certificate and key as a pair), which the listener serves
        // too: a file that does not load is refused here, naming it.
        cache_upstream::peer_client_tls(tls).map_err(|e| ConfigError::new(e.to_string()))?;
    }
    Ok(Section {
        store,
        cache,
        quota,
        gc_interval,
        peer,
    })
}
