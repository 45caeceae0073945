//! A rule's signature policy at admission: a manifest is served only if a
//! cosign signature by one of the rule's keys covers its digest (see
//! [`crate::cosign`] for the format). Signatures are looked up in the
//! rule's upstream repository under cosign's `sha256-<hex>.sig` tag and
//! through its referrers API; payloads are fetched, checked against their
//! descriptors' digests, then verified.
//!
//! An index's signature covers its platform manifests; an unsigned index
//! is served (it is a list, not content), and each platform manifest
//! pulled through it must then be signed itself. Verdicts are kept per
//! rule and digest, bounded: a refusal for `recheck_refused`, a pass for
//! `recheck_allowed`. Failing to look signatures up (the upstream is down)
//! is an upstream error, not a verdict.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;

use super::queue::UpstreamCall;
use super::{Ctx, PullThroughCache};
use crate::cosign::{self, Unverified};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{AdmissionOutcome, Event};
use crate::manifest::ParsedManifest;
use crate::names::Reference;
use crate::policy::SignaturePolicy;
use crate::upstream::{Manifest, media_types};

/// Verdicts kept at once, all rules together.
const MAX_VERDICTS: usize = 10_000;
/// Signature manifests looked at per digest, and signatures per manifest.
const MAX_SIGNATURE_MANIFESTS: usize = 8;
const MAX_SIGNATURES: usize = 16;

#[derive(Debug, Clone)]
enum Verdict {
    /// Signed, by this key.
    Signed(String),
    /// A platform manifest of this signed index.
    Covered(Digest),
    /// Not verified, for this reason.
    Unverified(Unverified),
}

/// Verdicts per (rule, digest), each until a time; the oldest go first
/// when full.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    inner: Mutex<VerdictMap>,
}

#[derive(Debug, Default)]
struct VerdictMap {
    map: HashMap<(Arc<str>, Digest), (Verdict, SystemTime)>,
    order: VecDeque<(Arc<str>, Digest)>,
}

impl Verdicts {
    fn get(&self, rule: &str, d: &Digest, now: SystemTime) -> Option<Verdict> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (v, until) = m.map.get(&(Arc::from(rule), d.clone()))?;
        (now < *until).then(|| v.clone())
    }

    fn put(&self, rule: &str, d: &Digest, v: Verdict, until: SystemTime) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::from(rule), d.clone());
        if m.map.insert(key.clone(), (v, until)).is_none() {
            m.order.push_back(key);
        }
        while m.map.len() > MAX_VERDICTS {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            m.map.remove(&old);
        }
    }
}

/// One admission decision, as [`PullThroughCache::audit`] records it.
pub(crate) struct Decision<'a> {
    /// `signatures`, or the hook's name.
    pub(crate) policy: &'a str,
    pub(crate) outcome: AdmissionOutcome,
    pub(crate) reason: &'a str,
    /// A refusal's structured details.
    pub(crate) detail: Option<&'a serde_json::Value>,
    /// Decided just now rather than remembered.
    pub(crate) fresh: bool,
}

/// Whether a manifest is signature or attestation material: an image
/// manifest whose layers are all signature payloads (nothing runnable).
fn is_signature_artifact(parsed: &ParsedManifest) -> bool {
    !parsed.is_index()
        && !parsed.layers.is_empty()
        && parsed.layers.iter().all(|l| {
            l.media_type
                .as_deref()
                .is_some_and(|t| cosign::ARTIFACT_LAYER_TYPES.contains(&t))
        })
}

impl PullThroughCache {
    /// Applies the rule's signature policy to a manifest about to be served
    /// or cached: `Err(Denied)` when it refuses.
    pub(crate) async fn check_signatures(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        m: &Manifest,
        parsed: &ParsedManifest,
    ) -> Result<()> {
        let Some(policy) = ctx.policy().signatures.clone() else {
            return Ok(());
        };
        if is_signature_artifact(parsed) {
            return Ok(());
        }
        let inner = &self.inner;
        let rule = ctx.rule.name();
        let now = inner.clock.now();
        let (verdict, fresh) = match inner.verdicts.get(rule, &m.digest, now) {
            Some(v) => (v, false),
            None => {
                let v = match self.find_signature(ctx, &m.digest, &policy).await? {
                    Ok(key) => Verdict::Signed(key),
                    Err(why) => Verdict::Unverified(why),
                };
                let until = match &v {
                    Verdict::Unverified(_) => now + policy.recheck_refused,
                    _ => now + policy.recheck_allowed,
                };
                inner.verdicts.put(rule, &m.digest, v.clone(), until);
                (v, true)
            }
        };
        if let Verdict::Signed(_) = &verdict
            && parsed.is_index()
        {
            let until = now + policy.recheck_allowed;
            for (child, _) in &parsed.manifests {
                inner.verdicts.put(
                    rule,
                    &child.digest,
                    Verdict::Covered(m.digest.clone()),
                    until,
                );
            }
        }
        let (outcome, reason) = match &verdict {
            Verdict::Signed(key) => (AdmissionOutcome::Allowed, format!("signed with {key}")),
            Verdict::Covered(index) => (
                AdmissionOutcome::Allowed,
                format!("covered by the signed index {index}"),
            ),
            Verdict::Unverified(Unverified::NoSignature) if parsed.is_index() => (
                AdmissionOutcome::Allowed,
                "unsigned index: each platform manifest is checked when pulled".to_owned(),
            ),
            Verdict::Unverified(why) if policy.enforcing() => {
                (AdmissionOutcome::Refused, why.to_string())
            }
            Verdict::Unverified(why) => (AdmissionOutcome::AuditOnly, why.to_string()),
        };
        let decision = Decision {
            policy: "signatures",
            outcome,
            reason: &reason,
            detail: None,
            fresh,
        };
        self.audit(ctx, reference, &m.digest, decision).await;
        match outcome {
            AdmissionOutcome::Refused => Err(Error::denied(format!(
                "{} {reference} refused by the signature policy of rule {rule:?}: {reason}",
                ctx.local
            ))),
            _ => Ok(()),
        }
    }

    /// Records an admission decision: an event always, a log event when
    /// it was just made or refuses.
    pub(crate) async fn audit(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        digest: &Digest,
        decision: Decision<'_>,
    ) {
        let rule = ctx.rule.name();
        let Decision {
            policy,
            outcome,
            reason,
            detail,
            fresh,
        } = decision;
        self.inner.events.event(&Event::Admission {
            rule,
            outcome,
            repository: &ctx.local,
            reference,
            digest,
            policy,
            reason,
            detail,
            fresh,
        });
        // What a console shows; a remembered pass (a warm pull) keeps nothing.
        if fresh || outcome != AdmissionOutcome::Allowed {
            let record = super::AdmissionRecord {
                policy: policy.to_owned(),
                outcome,
                reason: reason.to_owned(),
                detail: detail.cloned(),
                rule: rule.to_owned(),
                reference: reference.to_string(),
                at: self.inner.clock.now(),
            };
            self.inner
                .keep_verdict(&ctx.local, digest, record, fresh)
                .await;
        }
        if outcome == AdmissionOutcome::Allowed && !fresh {
            return;
        }
        let outcome = outcome.as_str();
        let repository = ctx.local.as_str();
        if outcome == "allowed" {
            tracing::info!(target: "audit", rule, repository, %reference, %digest, policy, outcome, reason, "admission");
        } else {
            tracing::warn!(target: "audit", rule, repository, %reference, %digest, policy, outcome, reason, "admission");
        }
    }

    /// Looks for a signature of `d` by the policy's keys: `Ok(Ok(key))`
    /// when one verifies, `Ok(Err(why))` when none does, `Err` when the
    /// upstream could not be asked.
    async fn find_signature(
        &self,
        ctx: &Ctx,
        d: &Digest,
        policy: &SignaturePolicy,
    ) -> Result<std::result::Result<String, Unverified>> {
        let mut candidates: Vec<Manifest> = Vec::new();
        // cosign's tag scheme.
        if let Some(tag) = cosign::signature_tag(d) {
            match self.signature_manifest(ctx, &Reference::Tag(tag)).await {
                Ok(m) => candidates.push(m),
                Err(Error::ManifestUnknown { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The referrers API, where the upstream has one.
        let referrers = self
            .inner
            .call(UpstreamCall::Referrers, || {
                ctx.upstream.referrers(&ctx.upstream_repo, d)
            })
            .await?;
        if let Some(index) = referrers
            && let Ok(parsed) = ParsedManifest::parse(&index.bytes)
        {
            let doc: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap_or_default();
            let entries = doc["manifests"].as_array().cloned().unwrap_or_default();
            for (desc, _) in parsed.manifests.iter().take(MAX_SIGNATURE_MANIFESTS) {
                let is_sig = entries.iter().any(|e| {
                    e["digest"].as_str() == Some(desc.digest.as_str())
                        && e["artifactType"].as_str() == Some(cosign::SIGNATURE_ARTIFACT)
                });
                if !is_sig || candidates.iter().any(|c| c.digest == desc.digest) {
                    continue;
                }
                match self
                    .signature_manifest(ctx, &Reference::Digest(desc.digest.clone()))
                    .await
                {
                    Ok(m) => candidates.push(m),
                    Err(Error::ManifestUnknown { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut best = Unverified::NoSignature;
        for m in &candidates {
            let doc: serde_json::Value = match serde_json::from_slice(&m.bytes) {
                Ok(v) => v,
                Err(e) => {
                    best = Unverified::Malformed(format!("signature manifest: {e}"));
                    continue;
                }
            };
            let layers = doc["layers"].as_array().cloned().unwrap_or_default();
            for layer in layers.iter().take(MAX_SIGNATURES) {
                let Some(sig) = layer["annotations"][cosign::SIGNATURE_ANNOTATION].as_str() else {
                    continue;
                };
                let payload = match self.signature_payload(ctx, layer).await? {
                    Ok(p) => p,
                    Err(why) => {
                        best = why;
                        continue;
                    }
                };
                match cosign::verify(&payload, sig, d, &policy.keys) {
                    Ok(key) => return Ok(Ok(key.name().to_owned())),
                    // Keep the most telling reason: anything beats "none".
                    Err(why) => best = why,
                }
            }
        }
        Ok(Err(best))
    }

    async fn signature_manifest(&self, ctx: &Ctx, reference: &Reference) -> Result<Manifest> {
        let m = self
            .inner
            .call(UpstreamCall::Manifest, || {
                ctx.upstream.manifest(
                    &ctx.upstream_repo,
                    reference,
                    &[media_types::OCI_MANIFEST, media_types::DOCKER_MANIFEST],
                )
            })
            .await?;
        if m.bytes.len() > self.inner.opts.max_manifest_size {
            return Err(Error::manifest_invalid("signature manifest too large"));
        }
        Ok(m)
    }

    /// A signature layer's payload, fetched and checked against its
    /// descriptor: `Ok(Err(why))` when it is not usable.
    async fn signature_payload(
        &self,
        ctx: &Ctx,
        layer: &serde_json::Value,
    ) -> Result<std::result::Result<Vec<u8>, Unverified>> {
        let Some(d) = layer["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
            return Ok(Err(Unverified::Malformed("payload digest".into())));
        };
        if layer["size"]
            .as_u64()
            .is_none_or(|n| n > cosign::MAX_PAYLOAD as u64)
        {
            return Ok(Err(Unverified::Malformed(format!(
                "payload {d} larger than {} bytes",
                cosign::MAX_PAYLOAD
            ))));
        }
        let blob = match self
            .inner
            .call(UpstreamCall::Blob, || {
                ctx.upstream.blob(&ctx.upstream_repo, &d, None)
            })
            .await
        {
            Ok(b) => b,
            Err(Error::BlobUnknown { .. }) => {
                return Ok(Err(Unverified::Malformed(format!(
                    "payload {d} is missing"
                ))));
            }
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        let mut s = blob.stream;
        while let Some(c) = s.next().await {
            let c = c?;
            if bytes.len() + c.len() > cosign::MAX_PAYLOAD {
                return Ok(Err(Unverified::Malformed(format!("payload {d} too large"))));
            }
            bytes.extend_from_slice(&c);
        }
        if Digest::compute(d.algorithm(), &bytes) != d {
            return Ok(Err(Unverified::Malformed(format!(
                "payload does not match its digest {d}"
            ))));
        }
        Ok(Ok(bytes))
    }
}
