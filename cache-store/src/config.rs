//! The store as configured (feature `serde`): which backend, where, and
//! with which options, validated when read and opened with [`StorageConfig::open`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache_core::config::{ConfigError, rebase};
use cache_core::{BlobStore, Secret};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use crate::{FsStore, FsStoreOptions, MemoryStore, ObjectBlobStore};

/// Which store (`backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A filesystem directory (the default).
    Fs,
    /// Object storage through `object_store`.
    Object,
    /// In memory.
    Memory,
}

impl fmt::Display for Backend {
    /// As written: `fs`, `object`, `memory`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Fs => "fs",
            Backend::Object => "object",
            Backend::Memory => "memory",
        })
    }
}

/// Where an object store option's value comes from: the value itself,
/// `{ env = "VAR" }` or `{ file = "path" }`. Values print as `<redacted>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// The value itself.
    Value(Secret),
    /// An environment variable's value.
    Env(String),
    /// A file's contents (trailing newline removed).
    File(PathBuf),
}

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Value(String),
            Env { env: String },
            File { file: PathBuf },
        }
        Raw::deserialize(d)
            .map_err(|_| D::Error::custom("a string, { env = \"VAR\" } or { file = \"path\" }"))
            .map(|r| match r {
                Raw::Value(v) => OptionValue::Value(Secret::new(v)),
                Raw::Env { env } => OptionValue::Env(env),
                Raw::File { file } => OptionValue::File(file),
            })
    }
}

impl OptionValue {
    /// Reads the value now; an error names the variable or the file.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            OptionValue::Value(s) => Ok(s.clone()),
            OptionValue::Env(var) => std::env::var(var)
                .map(Secret::new)
                .map_err(|_| format!("environment variable {var} is not set")),
            OptionValue::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
        }
    }
}

/// A store as configured: `backend = "fs"` (default) with `path` (default
/// `cache-data`) and `fsync` (default true); `backend = "object"` with
/// `url` (`az://container/prefix`, `s3://bucket/prefix`,
/// `gs://bucket/prefix`), `options` (`object_store`'s keys, each a value,
/// `{ env = "VAR" }` or `{ file = "path" }`) and `spool` (default: the
/// system's temporary directory); or `backend = "memory"`. A key of another
/// backend is refused.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cache_store::StorageConfig;
///
/// let cfg: StorageConfig = toml::from_str("backend = \"memory\"").unwrap();
/// let store = cfg.open().await.unwrap();
/// # let _ = store;
/// let e = toml::from_str::<StorageConfig>("url = \"az://c/p\"").unwrap_err();
/// assert!(e.message().contains("url is for backend = \"object\", not \"fs\""), "{e}");
/// # });
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// In memory.
    Memory,
    /// A filesystem directory.
    Fs {
        /// The directory.
        path: PathBuf,
        /// fsync on commit.
        fsync: bool,
    },
    /// Object storage.
    Object {
        /// `az://container/prefix`, `s3://bucket/prefix`, ...
        url: String,
        /// `object_store` options, read when the store opens.
        options: Vec<(String, OptionValue)>,
        /// Where writes are spooled while they are fetched.
        spool: PathBuf,
    },
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Memory => f.write_str("Memory"),
            StorageConfig::Fs { path, fsync } => f
                .debug_struct("Fs")
                .field("path", path)
                .field("fsync", fsync)
                .finish(),
            StorageConfig::Object {
                url,
                options,
                spool,
            } => f
                .debug_struct("Object")
                .field("url", url)
                .field("options", options)
                .field("spool", spool)
                .finish(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<Backend>,
    path: Option<PathBuf>,
    fsync: Option<bool>,
    url: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, OptionValue>,
    spool: Option<PathBuf>,
}

impl TryFrom<RawStorage> for StorageConfig {
    type Error = ConfigError;

    fn try_from(r: RawStorage) -> Result<Self, ConfigError> {
        let backend = r.backend.unwrap_or(Backend::Fs);
        let name = backend.to_string();
        let not_for = |key: &str| {
            ConfigError::new(format!(
                "{key} is for backend = {:?}, not {name:?}",
                match key {
                    "path" | "fsync" => "fs",
                    _ => "object",
                }
            ))
        };
        let mut set = vec![
            ("path", r.path.is_some()),
            ("fsync", r.fsync.is_some()),
            ("url", r.url.is_some()),
            ("options", !r.options.is_empty()),
            ("spool", r.spool.is_some()),
        ];
        set.retain(|(key, given)| {
            *given
                && match backend {
                    Backend::Fs => !matches!(*key, "path" | "fsync"),
                    Backend::Object => !matches!(*key, "url" | "options" | "spool"),
                    Backend::Memory => true,
                }
        });
        if let Some((key, _)) = set.first() {
            return Err(not_for(key));
        }
        Ok(match backend {
            Backend::Memory => StorageConfig::Memory,
            Backend::Fs => StorageConfig::Fs {
                path: r.path.unwrap_or_else(|| "cache-data".into()),
                fsync: r.fsync.unwrap_or(true),
            },
            Backend::Object => StorageConfig::Object {
                url: r.url.ok_or_else(|| {
                    ConfigError::new(
                        "backend = \"object\" needs url (e.g. \"az://container/prefix\")",
                    )
                })?,
                options: r.options.into_iter().collect(),
                spool: r.spool.unwrap_or_else(std::env::temp_dir),
            },
        })
    }
}

impl<'de> Deserialize<'de> for StorageConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawStorage::deserialize(d)?
            .try_into()
            .map_err(D::Error::custom)
    }
}

impl Default for StorageConfig {
    /// `backend = "fs"`, `path = "cache-data"`, fsync on.
    fn default() -> Self {
        StorageConfig::Fs {
            path: "cache-data".into(),
            fsync: true,
        }
    }
}

impl StorageConfig {
    /// Makes relative paths (the directory, the spool, option files)
    /// relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        match self {
            StorageConfig::Memory => {}
            StorageConfig::Fs { path, .. } => rebase(path, base),
            StorageConfig::Object { options, spool, .. } => {
                rebase(spool, base);
                for (_, v) in options {
                    if let OptionValue::File(p) = v {
                        rebase(p, base);
                    }
                }
            }
        }
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        match self {
            StorageConfig::Memory => Backend::Memory,
            StorageConfig::Fs { .. } => Backend::Fs,
            StorageConfig::Object { .. } => Backend::Object,
        }
    }

    /// Whether several instances may share the store (object storage).
    pub fn shared(&self) -> bool {
        matches!(self, StorageConfig::Object { .. })
    }

    /// Opens the store. An object store is asked once now (a `HEAD`), so
    /// a store that does not answer or refuses the credentials fails at
    /// start, not on the first pull. Errors name the key and the value.
    pub async fn open(&self) -> Result<Arc<dyn BlobStore>, ConfigError> {
        Ok(match self {
            StorageConfig::Memory => Arc::new(MemoryStore::new()),
            StorageConfig::Fs { path, fsync } => Arc::new(
                FsStore::open_with(path, FsStoreOptions { fsync: *fsync })
                    .await
                    .map_err(|e| {
                        ConfigError::new(format!("path = {:?}: {e}", path.display().to_string()))
                    })?,
            ),
            StorageConfig::Object {
                url,
                options,
                spool,
            } => {
                let mut resolved = Vec::with_capacity(options.len());
                for (k, v) in options {
                    let value = v
                        .resolve()
                        .map_err(|e| ConfigError::new(format!("options.{k}: {e}")))?;
                    resolved.push((k.clone(), value.expose().to_owned()));
                }
                std::fs::create_dir_all(spool).map_err(|e| {
                    ConfigError::new(format!("spool = {:?}: {e}", spool.display().to_string()))
                })?;
                let bad = |e: cache_core::Error| ConfigError::new(format!("url = {url:?}: {e}"));
                let store = ObjectBlobStore::from_url(url, resolved, spool).map_err(bad)?;
                store
                    .stat(&cache_core::Digest::sha256_of(b""))
                    .await
                    .map_err(bad)?;
                Arc::new(store)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(text: &str) -> Result<StorageConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn the_object_backend_reads_its_url_options_and_spool_and_redacts_values() {
        let text = "backend = \"object\"\nurl = \"az://cache/proxy\"\nspool = \"spool\"\n[options]\nazure_storage_account_name = \"acct\"\nazure_storage_account_key = { env = \"CACHE_KEY\" }\nazure_storage_token = { file = \"token\" }\n";
        let mut c = storage(text).unwrap();
        c.rebase(Path::new("/base"));
        assert!(c.shared());
        assert_eq!(
            c,
            StorageConfig::Object {
                url: "az://cache/proxy".into(),
                spool: "/base/spool".into(),
                options: vec![
                    (
                        "azure_storage_account_key".to_owned(),
                        OptionValue::Env("CACHE_KEY".into())
                    ),
                    (
                        "azure_storage_account_name".to_owned(),
                        OptionValue::Value(Secret::new("acct"))
                    ),
                    (
                        "azure_storage_token".to_owned(),
                        OptionValue::File("/base/token".into())
                    ),
                ],
            }
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("acct") && shown.contains("<redacted>"),
            "{shown}"
        );
        let c = storage(&text.replace("spool = \"spool\"\n", "")).unwrap();
        assert!(matches!(c, StorageConfig::Object { spool, .. } if spool == std::env::temp_dir()));
    }

    #[test]
    fn each_backend_takes_only_its_keys_and_errors_name_them() {
        let mut c = storage("").unwrap();
        c.rebase(Path::new("/base"));
        assert_eq!(
            c,
            StorageConfig::Fs {
                path: "/base/cache-data".into(),
                fsync: true
            }
        );
        assert_eq!(
            storage("backend = \"memory\"").unwrap(),
            StorageConfig::Memory
        );
        assert_eq!(
            storage("path = \"/d\"\nfsync = false").unwrap(),
            StorageConfig::Fs {
                path: "/d".into(),
                fsync: false
            }
        );
        for (text, says) in [
            (
                "backend = \"tape\"",
                "unknown variant `tape`, expected one of `fs`, `object`, `memory`",
            ),
            ("backend = \"object\"", "backend = \"object\" needs url"),
            (
                "url = \"az://c/p\"",
                "url is for backend = \"object\", not \"fs\"",
            ),
            (
                "backend = \"memory\"\npath = \"x\"",
                "path is for backend = \"fs\", not \"memory\"",
            ),
            (
                "backend = \"object\"\nurl = \"az://c/p\"\nfsync = true",
                "fsync is for backend = \"fs\", not \"object\"",
            ),
            (
                "backend = \"object\"\nurl = \"az://c/p\"\n[options]\nk = 1",
                "a string, { env = \"VAR\" } or { file = \"path\" }",
            ),
            ("quota = \"5GiB\"", "unknown field `quota`"),
        ] {
            let e = storage(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[tokio::test]
    async fn opening_names_the_key_of_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = StorageConfig::Fs {
            path: file.join("sub"),
            fsync: true,
        }
        .open()
        .await
        .err()
        .unwrap();
        assert!(
            e.message().starts_with("path = ") && e.message().contains("a-file"),
            "{e}"
        );
        let e = storage("backend = \"object\"\nurl = \"ftp://files/cache\"")
            .unwrap()
            .open()
            .await
            .err()
            .unwrap();
        assert!(
            e.message().starts_with("url = \"ftp://files/cache\""),
            "{e}"
        );
        let e = storage("backend = \"object\"\nurl = \"az://c/p\"\n[options]\nk = { env = \"PTC_SURELY_UNSET\" }")
            .unwrap()
            .open()
            .await
            .err()
            .unwrap();
        assert!(
            e.message()
                .contains("options.k: environment variable PTC_SURELY_UNSET"),
            "{e}"
        );
        let store = StorageConfig::Fs {
            path: dir.path().join("store"),
            fsync: false,
        }
        .open()
        .await
        .unwrap();
        assert!(!store.shared());
    }
}
