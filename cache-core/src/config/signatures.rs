//! A rule's `signatures` table: who may sign what the rule serves, and
//! how.
//!
//! ```toml
//! [rule.signatures]
//! cosign_keys = ["keys/release.pub"]
//! keyless = [
//!   { issuer = "https://token.actions.githubusercontent.com",
//!     subject_regex = "https://github.com/acme/.+/.github/workflows/release.yml@refs/tags/v.+" },
//! ]
//! trusted_root = "sigstore/trusted_root.json"
//! notation = { trust_store = "notation/truststore", trust_policy = "notation/trustpolicy.json" }
//! require_attestations = [
//!   { predicate_type = "https://slsa.dev/provenance/v1",
//!     predicate = { "runDetails.builder.id" = "https://github.com/acme/builder" } },
//! ]
//! mode = "enforce"
//! ```
//!
//! The table deserialises and validates itself; the files it names are
//! read by a [`SignatureFiles`] (`cache_core::trust::TrustFiles`, feature
//! `trust`, reads them all; a closure reading cosign keys is one too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;

use super::{ConfigError, custom, duration, rebase};
use crate::cosign::CosignKey;
use crate::policy::{SignatureMode, SignaturePolicy};
use crate::signatures::Verifier;

/// The most entries of each list (keys, identities, attestations).
const MAX_ENTRIES: usize = 100;

/// A value a keyless identity names: exactly (`issuer`, `subject`) or by a
/// regular expression that must match the whole value (`issuer_regex`,
/// `subject_regex`, as cosign's `--certificate-identity-regexp`, but
/// anchored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchSpec {
    /// This value.
    Exact(String),
    /// A regular expression (validated).
    Regex(String),
}

/// One keyless identity: the OIDC issuer and the certificate subject (a
/// SAN: a workflow URI, an e-mail address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessSpec {
    /// `issuer` or `issuer_regex`.
    pub issuer: MatchSpec,
    /// `subject` or `subject_regex`.
    pub subject: MatchSpec,
}

/// `notation = { trust_store, trust_policy }`, in notation's own formats.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotationSpec {
    /// The trust store directory (holding `x509/ca/<name>/...`).
    pub trust_store: PathBuf,
    /// The trust policy document (`trustpolicy.json`).
    pub trust_policy: PathBuf,
}

/// One required attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationSpec {
    /// The in-toto predicate type (`https://slsa.dev/provenance/v1`).
    pub predicate_type: String,
    /// Who may sign it; with neither this nor `cosign_keys`, the table's
    /// own `keyless` and `cosign_keys`.
    pub keyless: Vec<KeylessSpec>,
    /// Keys it may be signed with.
    pub cosign_keys: Vec<PathBuf>,
    /// Predicate fields (dotted paths) and the values they must have.
    pub predicate: BTreeMap<String, String>,
}

/// A rule's `signatures` table as written. The files it names are read by
/// a [`SignatureFiles`] ([`policy_with`](Self::policy_with)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSpec {
    /// PEM public keys (ECDSA P-256), as `cosign generate-key-pair` writes.
    pub cosign_keys: Vec<PathBuf>,
    /// Keyless identities (need `trusted_root`).
    pub keyless: Vec<KeylessSpec>,
    /// Sigstore's `trusted_root.json`.
    pub trusted_root: Option<PathBuf>,
    /// Notation's trust store and trust policy.
    pub notation: Option<NotationSpec>,
    /// Attestations every image must have.
    pub require_attestations: Vec<AttestationSpec>,
    /// Refuse or only audit (`mode`, default `"enforce"`).
    pub mode: SignatureMode,
    /// How long a refusal stands before signatures are looked up again
    /// (`recheck_refused`, default `60s`).
    pub recheck_refused: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    issuer: Option<String>,
    issuer_regex: Option<String>,
    subject: Option<String>,
    subject_regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    predicate_type: String,
    #[serde(default)]
    keyless: Vec<RawKeyless>,
    #[serde(default)]
    cosign_keys: Vec<PathBuf>,
    #[serde(default)]
    predicate: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    #[serde(default)]
    cosign_keys: Vec<PathBuf>,
    #[serde(default)]
    keyless: Vec<RawKeyless>,
    trusted_root: Option<PathBuf>,
    notation: Option<NotationSpec>,
    #[serde(default)]
    require_attestations: Vec<RawAttestation>,
    mode: Option<SignatureMode>,
    recheck_refused: Option<String>,
}

fn one(key: &str, exact: Option<String>, regex: Option<String>) -> Result<MatchSpec, ConfigError> {
    match (exact, regex) {
        (Some(v), None) if !v.is_empty() => Ok(MatchSpec::Exact(v)),
        (None, Some(r)) => {
            regex::Regex::new(&r)
                .map_err(|e| ConfigError::new(format!("{key}_regex = {r:?}: {e}")))?;
            Ok(MatchSpec::Regex(r))
        }
        (Some(_), None) => Err(ConfigError::new(format!("{key} is empty"))),
        _ => Err(ConfigError::new(format!(
            "{key} needs one of {key} and {key}_regex"
        ))),
    }
}

fn keyless(list: Vec<RawKeyless>, at: &str) -> Result<Vec<KeylessSpec>, ConfigError> {
    if list.len() > MAX_ENTRIES {
        return Err(ConfigError::new(format!(
            "{at} has {} entries: at most {MAX_ENTRIES}",
            list.len()
        )));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let at = format!("{at}[{i}]");
            Ok(KeylessSpec {
                issuer: one("issuer", k.issuer, k.issuer_regex).map_err(|e| e.at(&at))?,
                subject: one("subject", k.subject, k.subject_regex).map_err(|e| e.at(&at))?,
            })
        })
        .collect()
}

impl TryFrom<RawSignatures> for SignatureSpec {
    type Error = ConfigError;

    fn try_from(r: RawSignatures) -> Result<Self, ConfigError> {
        if r.cosign_keys.len() > MAX_ENTRIES {
            return Err(ConfigError::new(format!(
                "cosign_keys has {} entries: at most {MAX_ENTRIES}",
                r.cosign_keys.len()
            )));
        }
        let keyless_ids = keyless(r.keyless, "keyless")?;
        let table_signs = !r.cosign_keys.is_empty() || !keyless_ids.is_empty();
        if r.require_attestations.len() > MAX_ENTRIES {
            return Err(ConfigError::new(format!(
                "require_attestations has {} entries: at most {MAX_ENTRIES}",
                r.require_attestations.len()
            )));
        }
        let mut attestations = Vec::new();
        let mut any_keyless = !keyless_ids.is_empty();
        for (i, a) in r.require_attestations.into_iter().enumerate() {
            let at = format!("require_attestations[{i}]");
            if a.predicate_type.trim().is_empty() {
                return Err(ConfigError::new(format!("{at}.predicate_type is empty")));
            }
            let ids = keyless(a.keyless, &format!("{at}.keyless"))?;
            if ids.is_empty() && a.cosign_keys.is_empty() && !table_signs {
                return Err(ConfigError::new(format!(
                    "{at} needs keyless or cosign_keys, here or in the table"
                )));
            }
            if let Some(k) = a
                .predicate
                .keys()
                .find(|k| k.is_empty() || k.split('.').any(str::is_empty))
            {
                return Err(ConfigError::new(format!(
                    "{at}.predicate: {k:?} is not a dotted path"
                )));
            }
            any_keyless |= !ids.is_empty() || (a.cosign_keys.is_empty() && !keyless_ids.is_empty());
            attestations.push(AttestationSpec {
                predicate_type: a.predicate_type,
                keyless: ids,
                cosign_keys: a.cosign_keys,
                predicate: a.predicate,
            });
        }
        if any_keyless && r.trusted_root.is_none() {
            return Err(ConfigError::new(
                "keyless needs trusted_root (Sigstore's trusted_root.json)",
            ));
        }
        if !table_signs && r.notation.is_none() && attestations.is_empty() {
            return Err(ConfigError::new(
                "cosign_keys is empty (give cosign_keys, keyless, notation or require_attestations)",
            ));
        }
        let default = SignaturePolicy::new(Vec::new(), SignatureMode::Enforce).recheck_refused;
        Ok(SignatureSpec {
            cosign_keys: r.cosign_keys,
            keyless: keyless_ids,
            trusted_root: r.trusted_root,
            notation: r.notation,
            require_attestations: attestations,
            mode: r.mode.unwrap_or(SignatureMode::Enforce),
            recheck_refused: duration("recheck_refused", &r.recheck_refused, default)?,
        })
    }
}

/// The table, validated: at least one way to verify; each keyless
/// identity with one of `issuer`/`issuer_regex` and one of
/// `subject`/`subject_regex` (regular expressions that compile);
/// `trusted_root` where anything is keyless; each attestation with a
/// predicate type and signers (its own or the table's). Errors name the
/// key (`keyless[0].subject_regex = "(": ...`).
impl<'de> Deserialize<'de> for SignatureSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawSignatures::deserialize(d)?.try_into().map_err(custom)
    }
}

/// Reads the files a signature table names. A closure reading cosign key
/// files is one (it refuses tables that name anything else);
/// `cache_core::trust::TrustFiles` (feature `trust`) reads them all.
pub trait SignatureFiles {
    /// The cosign public key in the file `path`; an error says why (it is
    /// reported under `cosign_keys`).
    fn cosign_key(&mut self, path: &Path) -> Result<CosignKey, String>;

    /// The verifiers of everything in `spec` but its `cosign_keys`
    /// (keyless identities and bundles, Notation, attestations), the files
    /// they need read. An error names the key. The default has none, and
    /// refuses a table that wants any.
    fn verifiers(&mut self, spec: &SignatureSpec) -> Result<Vec<Arc<dyn Verifier>>, ConfigError> {
        for (named, key) in [
            (!spec.keyless.is_empty(), "keyless"),
            (spec.notation.is_some(), "notation"),
            (
                !spec.require_attestations.is_empty(),
                "require_attestations",
            ),
        ] {
            if named {
                return Err(ConfigError::new(format!(
                    "{key}: this program does not verify it (cache-core feature `trust`)"
                )));
            }
        }
        Ok(Vec::new())
    }
}

impl<F: FnMut(&Path) -> Result<CosignKey, String>> SignatureFiles for F {
    fn cosign_key(&mut self, path: &Path) -> Result<CosignKey, String> {
        self(path)
    }
}

impl SignatureSpec {
    /// Makes relative paths relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        self.cosign_keys.iter_mut().for_each(|p| rebase(p, base));
        if let Some(p) = &mut self.trusted_root {
            rebase(p, base);
        }
        if let Some(n) = &mut self.notation {
            rebase(&mut n.trust_store, base);
            rebase(&mut n.trust_policy, base);
        }
        for a in &mut self.require_attestations {
            a.cosign_keys.iter_mut().for_each(|p| rebase(p, base));
        }
    }

    /// The policy, with each key from `key` (which reads and parses the
    /// file, say with [`CosignKey::from_pem`], and may cache it); an
    /// error names `cosign_keys`. A table with more than keys needs
    /// [`policy_with`](Self::policy_with) and `TrustFiles`.
    pub fn policy(
        &self,
        mut key: impl FnMut(&Path) -> Result<CosignKey, String>,
    ) -> Result<SignaturePolicy, ConfigError> {
        self.policy_with(&mut key)
    }

    /// The policy, the files it names read by `files`.
    pub fn policy_with(
        &self,
        files: &mut dyn SignatureFiles,
    ) -> Result<SignaturePolicy, ConfigError> {
        let keys = self
            .cosign_keys
            .iter()
            .map(|p| {
                files
                    .cosign_key(p)
                    .map_err(|e| ConfigError::new(format!("cosign_keys: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let verifiers = files.verifiers(self)?;
        let mut policy = SignaturePolicy::new(keys, self.mode).with_verifiers(verifiers);
        policy.recheck_refused = self.recheck_refused;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<SignatureSpec, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn keyless_attestations_and_notation_read_and_validate() {
        let s = table(
            r#"
keyless = [{ issuer = "https://token.actions.githubusercontent.com", subject_regex = "https://github.com/acme/.+" }]
trusted_root = "root.json"
notation = { trust_store = "ts", trust_policy = "tp.json" }
require_attestations = [{ predicate_type = "https://slsa.dev/provenance/v1", predicate = { "runDetails.builder.id" = "b" } }]
mode = "audit"
"#,
        )
        .unwrap();
        assert_eq!(
            s.keyless[0].subject,
            MatchSpec::Regex("https://github.com/acme/.+".into())
        );
        assert_eq!(
            s.require_attestations[0].predicate["runDetails.builder.id"],
            "b"
        );
        assert_eq!(s.mode, SignatureMode::Audit);
        for (text, says) in [
            ("", "cosign_keys is empty"),
            (
                "keyless = [{ issuer = \"i\", subject = \"s\" }]",
                "keyless needs trusted_root",
            ),
            (
                "trusted_root = \"r\"\nkeyless = [{ issuer = \"i\" }]",
                "keyless[0].subject needs one of subject and subject_regex",
            ),
            (
                "trusted_root = \"r\"\nkeyless = [{ issuer = \"i\", subject_regex = \"(\" }]",
                "keyless[0].subject_regex = \"(\"",
            ),
            (
                "trusted_root = \"r\"\nkeyless = [{ issuer = \"i\", issuer_regex = \"i\", subject = \"s\" }]",
                "keyless[0].issuer needs one of",
            ),
            (
                "require_attestations = [{ predicate_type = \"p\" }]",
                "require_attestations[0] needs keyless or cosign_keys",
            ),
            (
                "cosign_keys = [\"k\"]\nrequire_attestations = [{ predicate_type = \"\" }]",
                "require_attestations[0].predicate_type is empty",
            ),
            (
                "cosign_keys = [\"k\"]\nrequire_attestations = [{ predicate_type = \"p\", predicate = { \"a..b\" = \"x\" } }]",
                "not a dotted path",
            ),
            (
                "notation = { trust_store = \"t\" }",
                "missing field `trust_policy`",
            ),
            (
                "cosign_keys = [\"k\"]\nkeyles = []",
                "unknown field `keyles`",
            ),
        ] {
            let e = table(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_key_reader_alone_refuses_what_it_cannot_verify() {
        let s = table("notation = { trust_store = \"t\", trust_policy = \"p\" }").unwrap();
        let e = s.policy(|_| unreachable!()).unwrap_err();
        assert!(e.message().starts_with("notation: "), "{e}");
    }

    #[test]
    fn paths_rebase() {
        let mut s = table(
            "cosign_keys = [\"k\"]\ntrusted_root = \"r.json\"\nnotation = { trust_store = \"/abs\", trust_policy = \"p.json\" }",
        )
        .unwrap();
        s.rebase(Path::new("/etc/proxy"));
        assert_eq!(s.trusted_root.unwrap(), PathBuf::from("/etc/proxy/r.json"));
        let n = s.notation.unwrap();
        assert_eq!(
            (n.trust_store, n.trust_policy),
            (PathBuf::from("/abs"), PathBuf::from("/etc/proxy/p.json"))
        );
    }
}
