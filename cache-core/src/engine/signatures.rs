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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
use crate::names::{Reference, Tag};
use crate::policy::SignaturePolicy;
use crate::signatures::{self, Artifact, ArtifactKind, Subject};
use crate::upstream::{Manifest, media_types};

/// Verdicts kept at once, all rules together.
const MAX_VERDICTS: usize = 10_000;
/// Signature manifests looked at per digest, and signatures per manifest.
const MAX_SIGNATURE_MANIFESTS: usize = 16;
const MAX_SIGNATURES: usize = 16;
/// Signature material read per digest, all layers together.
const MAX_MATERIAL: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Verdict {
    /// Passed: who vouched for it.
    Signed(String),
    /// A platform manifest of this signed index.
    Covered(Digest),
    /// Not verified, for this reason.
    Unverified(Unverified),
}

/// Verdicts per (rule, digest), each until a time and for the policy that
/// made it (a reload builds new policies, with their trust roots re-read,
/// so their verdicts start afresh); the oldest go first when full.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    inner: Mutex<VerdictMap>,
    /// Platform manifests whose index's signature passed while the index
    /// lacked a required attestation: their signature requirement is met
    /// (`Verdict::Covered`), their attestations are judged on their own.
    signed: Mutex<VerdictMap>,
}

/// The policy a verdict was made under. A weak reference keeps the
/// policy's allocation (not the policy) alive, so a later policy can never
/// reuse its address and inherit its verdicts.
type MadeBy = std::sync::Weak<crate::policy::SignaturePolicy>;

#[derive(Debug, Default)]
struct VerdictMap {
    map: HashMap<(Arc<str>, Digest), (Verdict, SystemTime, MadeBy)>,
    order: VecDeque<(Arc<str>, Digest)>,
}

impl Verdicts {
    fn get(&self, rule: &str, d: &Digest, now: SystemTime, policy: &MadeBy) -> Option<Verdict> {
        Self::get_in(&self.inner, rule, d, now, policy)
    }

    fn put(&self, rule: &str, d: &Digest, v: Verdict, until: SystemTime, policy: &MadeBy) {
        Self::put_in(&self.inner, rule, d, v, until, policy)
    }

    /// The signed index that covers `d`'s signature requirement, if any.
    fn signed_by_index(
        &self,
        rule: &str,
        d: &Digest,
        now: SystemTime,
        policy: &MadeBy,
    ) -> Option<Digest> {
        match Self::get_in(&self.signed, rule, d, now, policy)? {
            Verdict::Covered(index) => Some(index),
            _ => None,
        }
    }

    fn get_in(
        map: &Mutex<VerdictMap>,
        rule: &str,
        d: &Digest,
        now: SystemTime,
        policy: &MadeBy,
    ) -> Option<Verdict> {
        let m = map.lock().unwrap_or_else(|p| p.into_inner());
        let (v, until, made_by) = m.map.get(&(Arc::from(rule), d.clone()))?;
        (now < *until && made_by.ptr_eq(policy)).then(|| v.clone())
    }

    fn put_in(
        map: &Mutex<VerdictMap>,
        rule: &str,
        d: &Digest,
        v: Verdict,
        until: SystemTime,
        policy: &MadeBy,
    ) {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::from(rule), d.clone());
        if m.map
            .insert(key.clone(), (v, until, policy.clone()))
            .is_none()
        {
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
        let made_by = Arc::downgrade(&policy);
        let (verdict, fresh) = match inner.verdicts.get(rule, &m.digest, now, &made_by) {
            Some(v) => (v, false),
            None => {
                // A platform manifest of an index whose signature passed
                // needs only its attestations.
                let index = (!parsed.is_index())
                    .then(|| {
                        inner
                            .verdicts
                            .signed_by_index(rule, &m.digest, now, &made_by)
                    })
                    .flatten()
                    .map(|ix| format!("covered by the signed index {ix}"));
                let (v, signed) = self.find_signature(ctx, m, &policy, index).await?;
                let v = match v {
                    Ok(key) => Verdict::Signed(key),
                    Err(why) => Verdict::Unverified(why),
                };
                if parsed.is_index()
                    && signed.is_some()
                    && matches!(v, Verdict::Unverified(Unverified::NoAttestation(_)))
                {
                    let until = now + policy.recheck_allowed;
                    for (child, _) in &parsed.manifests {
                        Verdicts::put_in(
                            &inner.verdicts.signed,
                            rule,
                            &child.digest,
                            Verdict::Covered(m.digest.clone()),
                            until,
                            &made_by,
                        );
                    }
                }
                let until = match &v {
                    Verdict::Unverified(_) => now + policy.recheck_refused,
                    _ => now + policy.recheck_allowed,
                };
                inner
                    .verdicts
                    .put(rule, &m.digest, v.clone(), until, &made_by);
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
                    &made_by,
                );
            }
        }
        let (outcome, reason) = match &verdict {
            Verdict::Signed(by) => (AdmissionOutcome::Allowed, by.clone()),
            Verdict::Covered(index) => (
                AdmissionOutcome::Allowed,
                format!("covered by the signed index {index}"),
            ),
            Verdict::Unverified(Unverified::NoSignature | Unverified::NoAttestation(_))
                if parsed.is_index() =>
            {
                (
                    AdmissionOutcome::Allowed,
                    "unsigned index: each platform manifest is checked when pulled".to_owned(),
                )
            }
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
        // Who asked: a principal's name, `scanner`, or `-` for an unnamed client.
        let principal = ctx.caller.name().unwrap_or("-");
        if outcome == "allowed" {
            tracing::info!(target: "audit", rule, repository, principal, %reference, %digest, policy, outcome, reason, "admission");
        } else {
            tracing::warn!(target: "audit", rule, repository, principal, %reference, %digest, policy, outcome, reason, "admission");
        }
    }

    /// The signatures and attestations of an image as the rule of `name`
    /// judges them: the manifest `reference` (fetched from the upstream,
    /// never from the cache or its verdicts) and, for an index, each of
    /// its platform manifests (at most 64), with every artifact found and
    /// every verifier's answer. Caches nothing; `registry-proxy verify`
    /// prints it.
    pub async fn inspect_signatures(
        &self,
        name: &crate::names::RepoName,
        reference: &Reference,
    ) -> Result<signatures::SignatureReport> {
        let ctx = self.ctx_for(name, &crate::policy::Caller::Client)?;
        let top = self
            .inner
            .call(UpstreamCall::Manifest, || {
                ctx.upstream
                    .manifest(&ctx.upstream_repo, reference, media_types::ALL_MANIFESTS)
            })
            .await
            .map_err(|e| e.blame_upstream(ctx.rule.registry()))?;
        if top.bytes.len() > self.inner.opts.max_manifest_size {
            return Err(Error::manifest_invalid("manifest too large"));
        }
        let parsed = ParsedManifest::parse(&top.bytes)?;
        let policy = ctx.policy().signatures.clone();
        let verifiers = policy
            .as_ref()
            .map(|p| p.all_verifiers())
            .unwrap_or_default();
        let all: BTreeSet<ArtifactKind> = [
            ArtifactKind::SimpleSigning,
            ArtifactKind::Dsse,
            ArtifactKind::Bundle,
            ArtifactKind::Jws,
            ArtifactKind::Cose,
        ]
        .into();
        let mut manifests = vec![(top, None)];
        for (desc, platform) in parsed.manifests.iter().take(64) {
            let by_digest = Reference::Digest(desc.digest.clone());
            let child = self
                .inner
                .call(UpstreamCall::Manifest, || {
                    ctx.upstream.manifest(
                        &ctx.upstream_repo,
                        &by_digest,
                        media_types::ALL_MANIFESTS,
                    )
                })
                .await
                .map_err(|e| e.blame_upstream(ctx.rule.registry()))?;
            manifests.push((child, platform.as_ref().map(|p| p.to_string())));
        }
        let scope = format!("{}/{}", ctx.rule.registry(), ctx.upstream_repo);
        let mut reports = Vec::new();
        // An index whose signature passed (but not its attestations)
        // covers its platforms' signature requirement.
        let mut covered: Option<String> = None;
        for (i, (m, platform)) in manifests.into_iter().enumerate() {
            let (artifacts, problem) = self.find_artifacts(&ctx, &m.digest, &all).await?;
            let subject = Subject {
                digest: &m.digest,
                size: m.bytes.len() as u64,
                media_type: &m.media_type,
                scope: &scope,
            };
            let now = self.inner.clock.now();
            let j =
                signatures::judge_with(&verifiers, &subject, &artifacts, now, covered.as_deref());
            if i == 0 && j.signed.is_some() && parsed.is_index() {
                covered = Some(format!("covered by the signed index {}", m.digest));
            }
            let verdict = match (j.verdict, problem) {
                (Err(why), Some(p)) if p.rank() > why.rank() => Err(p),
                (v, _) => v,
            };
            reports.push(signatures::ManifestReport {
                digest: m.digest.clone(),
                platform,
                artifacts: artifacts
                    .iter()
                    .map(|a| (a.kind, a.found.clone()))
                    .collect(),
                checks: j.checks,
                verdict,
            });
        }
        Ok(signatures::SignatureReport {
            rule: ctx.rule.name().to_owned(),
            upstream: scope,
            wants: verifiers.iter().map(|v| v.wants()).collect(),
            audit: policy.as_ref().is_some_and(|p| !p.enforcing()),
            manifests: reports,
        })
    }

    /// Finds the signature material of `d` and judges it by the policy:
    /// `Ok(Ok(who))` when it passes, `Ok(Err(why))` when not, with who
    /// signed when the signature requirement was met; `Err` when the
    /// upstream could not be asked. With `signed`, the signature
    /// requirement is already met (by a signed index): only attestations
    /// are looked for.
    async fn find_signature(
        &self,
        ctx: &Ctx,
        m: &Manifest,
        policy: &SignaturePolicy,
        signed: Option<String>,
    ) -> Result<(std::result::Result<String, Unverified>, Option<String>)> {
        let verifiers = policy.all_verifiers();
        let kinds: BTreeSet<ArtifactKind> = verifiers
            .iter()
            .filter(|v| signed.is_none() || *v.role() != signatures::Role::Signature)
            .flat_map(|v| v.reads().iter().copied())
            .collect();
        let (artifacts, problem) = self.find_artifacts(ctx, &m.digest, &kinds).await?;
        let scope = format!("{}/{}", ctx.rule.registry(), ctx.upstream_repo);
        let subject = Subject {
            digest: &m.digest,
            size: m.bytes.len() as u64,
            media_type: &m.media_type,
            scope: &scope,
        };
        let now = self.inner.clock.now();
        let j = signatures::judge_with(&verifiers, &subject, &artifacts, now, signed.as_deref());
        let verdict = match j.verdict {
            Err(why) => Err(match problem {
                Some(p) if p.rank() > why.rank() => p,
                _ => why,
            }),
            ok => ok,
        };
        Ok((verdict, j.signed))
    }

    /// The signature material of `d` of these kinds: layers of cosign's
    /// `.sig` and `.att` tag manifests and of the manifests that refer to
    /// `d` (the referrers API, else its tag schema), each checked against
    /// its descriptor. Also the most telling problem with a layer that
    /// could not be used (missing, too large, altered).
    pub(super) async fn find_artifacts(
        &self,
        ctx: &Ctx,
        d: &Digest,
        kinds: &BTreeSet<ArtifactKind>,
    ) -> Result<(Vec<Artifact>, Option<Unverified>)> {
        let mut manifests: Vec<(String, Manifest)> = Vec::new();
        // cosign's tag scheme: signatures, then attestations.
        for (kind, suffix) in [
            (ArtifactKind::SimpleSigning, "sig"),
            (ArtifactKind::Dsse, "att"),
        ] {
            if !kinds.contains(&kind) {
                continue;
            }
            let Some(tag) = cosign::signature_tag(d)
                .and_then(|t| Tag::parse(&t.as_str().replace(".sig", &format!(".{suffix}"))).ok())
            else {
                continue;
            };
            let found = format!("tag {tag}");
            match self.signature_manifest(ctx, &Reference::Tag(tag)).await {
                Ok(m) => manifests.push((found, m)),
                Err(Error::ManifestUnknown { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The referrers: the API where the upstream has one, else the tag schema.
        if !kinds.is_empty() {
            let index = self.fetch_referrers(ctx, d).await?;
            let doc: serde_json::Value = serde_json::from_slice(&index).unwrap_or_default();
            let entries = doc["manifests"].as_array().cloned().unwrap_or_default();
            let wanted = entries.iter().filter(|e| {
                let t = e["artifactType"].as_str().unwrap_or_default();
                referrer_kinds(t).iter().any(|k| kinds.contains(k))
            });
            for e in wanted.take(MAX_SIGNATURE_MANIFESTS) {
                let Some(digest) = e["digest"].as_str().and_then(|s| Digest::parse(s).ok()) else {
                    continue;
                };
                if manifests.iter().any(|(_, m)| m.digest == digest) {
                    continue;
                }
                let found = format!("referrer {digest}");
                match self
                    .signature_manifest(ctx, &Reference::Digest(digest))
                    .await
                {
                    Ok(m) => manifests.push((found, m)),
                    Err(Error::ManifestUnknown { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut artifacts: Vec<Artifact> = Vec::new();
        let mut problem: Option<Unverified> = None;
        let mut read = 0usize;
        'manifests: for (found, m) in &manifests {
            let doc: serde_json::Value = match serde_json::from_slice(&m.bytes) {
                Ok(v) => v,
                Err(e) => {
                    problem = Some(Unverified::Malformed(format!("signature manifest: {e}")));
                    continue;
                }
            };
            let manifest_annotations = string_map(&doc["annotations"]);
            let layers = doc["layers"].as_array().cloned().unwrap_or_default();
            for layer in layers.iter().take(MAX_SIGNATURES) {
                let Some(kind) = layer["mediaType"].as_str().and_then(ArtifactKind::of_layer)
                else {
                    continue;
                };
                if !kinds.contains(&kind) {
                    continue;
                }
                if read >= MAX_MATERIAL {
                    problem.get_or_insert(Unverified::Malformed(format!(
                        "more than {MAX_MATERIAL} bytes of signature material; the rest was not read"
                    )));
                    break 'manifests;
                }
                match self.signature_payload(ctx, layer, kind.max_size()).await? {
                    Ok(bytes) => artifacts.push(Artifact {
                        kind,
                        found: found.clone(),
                        bytes: {
                            read += bytes.len();
                            bytes.into()
                        },
                        annotations: string_map(&layer["annotations"]),
                        manifest_annotations: manifest_annotations.clone(),
                    }),
                    Err(why) => {
                        if problem.as_ref().is_none_or(|p| why.rank() >= p.rank()) {
                            problem = Some(why);
                        }
                    }
                }
            }
        }
        Ok((artifacts, problem))
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

    /// A signature layer's content, fetched and checked against its
    /// descriptor: `Ok(Err(why))` when it is not usable.
    async fn signature_payload(
        &self,
        ctx: &Ctx,
        layer: &serde_json::Value,
        max: usize,
    ) -> Result<std::result::Result<Vec<u8>, Unverified>> {
        let Some(d) = layer["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
            return Ok(Err(Unverified::Malformed("payload digest".into())));
        };
        if layer["size"].as_u64().is_none_or(|n| n > max as u64) {
            return Ok(Err(Unverified::Malformed(format!(
                "payload {d} larger than {max} bytes"
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
            if bytes.len() + c.len() > max {
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

/// The kinds of layer a referrer of this artifact type holds.
fn referrer_kinds(artifact_type: &str) -> &'static [ArtifactKind] {
    match artifact_type {
        cosign::SIGNATURE_ARTIFACT => &[ArtifactKind::SimpleSigning],
        signatures::NOTATION_ARTIFACT => &[ArtifactKind::Jws, ArtifactKind::Cose],
        signatures::DSSE_ENVELOPE | "application/vnd.in-toto+json" => &[ArtifactKind::Dsse],
        t if t.starts_with("application/vnd.dev.sigstore.bundle") => &[ArtifactKind::Bundle],
        _ => &[],
    }
}

/// A JSON object's string values.
fn string_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
