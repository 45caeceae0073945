//! Manifests: by digest (immutable, verified) and by tag (under the rule's
//! freshness policy), fetched once however many ask, admitted before they
//! are cached or served.

use std::time::Duration;

use bytes::Bytes;

use super::flights;
use super::keys::TagRecord;
use super::queue::UpstreamCall;
use super::response::ManifestResponse;
use super::signatures::Decision;
use super::{Ctx, PullThroughCache};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{CacheStatus, Event};
use crate::keys;
use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName, Tag};
use crate::policy::{AdmissionRequest, Caller, TagFreshness};
use crate::store::BlobStoreExt;
use crate::upstream::{Accept, Manifest, ManifestHead, media_types};

/// The longest admission of a fetched manifest may take, on top of
/// `manifest_timeout` for the fetch itself. Hooks bound their own waits
/// (a scan gate's `wait` is at most 10 minutes and then answers 503);
/// this only keeps a hook that never answers from holding the flight.
pub(crate) const MAX_ADMISSION: Duration = Duration::from_secs(660);

impl PullThroughCache {
    /// A manifest by tag or digest. A manifest of a media type `accept`
    /// does not admit is refused as `MANIFEST_UNKNOWN`, as the distribution
    /// registry does.
    pub async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<ManifestResponse> {
        self.manifest_for(name, reference, accept, &Caller::Client)
            .await
    }

    /// [`manifest`](Self::manifest) for `caller`: a scanner scoped to the
    /// repository is not held to admission (its scan decides it), and
    /// what it reads grants nothing to anyone else.
    ///
    /// Under a rule with a [`Prefetch`](crate::Prefetch) policy, a client
    /// served a manifest starts the background fetch of the rest of the
    /// image.
    pub async fn manifest_for(
        &self,
        name: &RepoName,
        reference: &Reference,
        accept: &Accept,
        caller: &Caller,
    ) -> Result<ManifestResponse> {
        let (ctx, resp) = self
            .manifest_answer(name, reference, accept, caller)
            .await?;
        // A scanner's reads are how admission is decided, not pulls (nor
        // are a prefetch's, a sync's or a warm's: they answer elsewhere).
        if !matches!(caller, Caller::Scanner { .. }) {
            self.inner.count_pull(name, reference);
        }
        // Clients that may cause upstream fetches start one; a scanner or a
        // caller that reads only what the store holds does not.
        if !matches!(caller, Caller::Scanner { .. })
            && caller.fetch_policy() == crate::policy::FetchPolicy::Upstream
        {
            self.prefetch_after(&ctx, &resp);
        }
        Ok(resp)
    }

    /// [`manifest_for`](Self::manifest_for) without starting a prefetch:
    /// the answer, and what the request resolved to.
    pub(super) async fn manifest_answer(
        &self,
        name: &RepoName,
        reference: &Reference,
        accept: &Accept,
        caller: &Caller,
    ) -> Result<(Ctx, ManifestResponse)> {
        let ctx = self.ctx_for(name, caller)?;
        let resp = match reference {
            Reference::Digest(d) => self.manifest_by_digest(&ctx, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(&ctx, t).await?,
        };
        if !accept.admits(&resp.media_type) {
            return Err(Error::manifest_unknown(
                name,
                format!("{reference} (is {}, not in Accept)", resp.media_type),
            ));
        }
        self.inner.events.event(&Event::Manifest {
            rule: ctx.rule.name(),
            repository: name,
            reference,
            digest: &resp.digest,
            status: resp.status,
            caller,
        });
        Ok((ctx, resp))
    }

    pub(crate) async fn load_manifest(&self, d: &Digest) -> Result<Option<Manifest>> {
        self.load_manifest_as(d, None).await
    }

    /// A stored manifest, from memory or the store. `media_type`, when the
    /// caller knows it (from a grant), saves reading the manifest's record.
    async fn load_manifest_as(
        &self,
        d: &Digest,
        media_type: Option<String>,
    ) -> Result<Option<Manifest>> {
        let hot = &self.inner.hot;
        if let Some((bytes, Some(media_type))) = hot.content(d) {
            return Ok(Some(Manifest {
                bytes,
                media_type,
                digest: d.clone(),
            }));
        }
        let mt = match media_type {
            Some(mt) => mt,
            None => match self.inner.store.get_meta(&keys::manifest(d)).await? {
                Some(mt) => String::from_utf8_lossy(&mt).into_owned(),
                None => return Ok(None),
            },
        };
        let bytes = match self.inner.store.get_bytes(d).await {
            Ok(b) => b,
            Err(Error::BlobUnknown { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let media_type = mt;
        hot.keep_content(d, bytes.clone(), Some(media_type.clone()));
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest: d.clone(),
        }))
    }

    /// Admits a stored manifest, then grants what it references (parsing
    /// it once for both).
    async fn admit_and_grant(&self, ctx: &Ctx, reference: &Reference, m: &Manifest) -> Result<()> {
        let parsed = self.admit(ctx, reference, m).await?;
        self.grant_referenced(ctx, m, parsed).await
    }

    /// Runs the admission hooks over a manifest that is about to be served
    /// or cached; the manifest parsed, if that was needed.
    async fn admit(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        m: &Manifest,
    ) -> Result<Option<ParsedManifest>> {
        if ctx.wiring.admission.is_empty() && ctx.policy().signatures.is_none() {
            return Ok(None);
        }
        if ctx.is_scanner() {
            // The scan is how admission is decided; its reads grant nothing.
            return Ok(None);
        }
        let parsed = ParsedManifest::parse(&m.bytes)?;
        self.check_signatures(ctx, reference, m, &parsed).await?;
        if ctx.wiring.admission.is_empty() {
            return Ok(Some(parsed));
        }
        // Remembered for a while: a warm pull costs no store read for it.
        let platform = match self.inner.hot.platform(&m.digest) {
            Some(p) => p,
            None => {
                let p = self
                    .inner
                    .store
                    .get_meta(&keys::platform(&m.digest))
                    .await?
                    .and_then(|b| std::str::from_utf8(&b).ok().and_then(Platform::parse));
                self.inner.hot.keep_platform(&m.digest, p.clone());
                p
            }
        };
        let req = AdmissionRequest {
            rule: &ctx.rule,
            repository: &ctx.local,
            reference,
            manifest: m,
            parsed: &parsed,
            platform: platform.as_ref(),
            caller: &ctx.caller,
        };
        use crate::events::AdmissionOutcome;
        use crate::policy::Verdict;
        for hook in &ctx.wiring.admission {
            let decided = |outcome, reason, detail, fresh| Decision {
                policy: hook.name(),
                outcome,
                reason,
                detail,
                fresh,
            };
            match hook.admit(&req).await {
                Ok(Verdict::Pass) => {}
                Ok(Verdict::Allowed { reason, fresh }) => {
                    let d = decided(AdmissionOutcome::Allowed, &reason, None, fresh);
                    self.audit(ctx, reference, &m.digest, d).await
                }
                Ok(Verdict::AuditOnly { reason, fresh }) => {
                    let d = decided(AdmissionOutcome::AuditOnly, &reason, None, fresh);
                    self.audit(ctx, reference, &m.digest, d).await
                }
                Err(e) => {
                    if let Error::Denied { reason, detail } = &e {
                        let d = decided(AdmissionOutcome::Refused, reason, detail.as_deref(), true);
                        self.audit(ctx, reference, &m.digest, d).await;
                        self.withdraw_if_granted(ctx, &parsed).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Some(parsed))
    }

    /// A refused manifest whose referenced content `ctx`'s repository was
    /// granted (it was admitted before: a verdict changed) loses those
    /// grants, under a rule that gives clients blobs only as parts of
    /// admitted manifests. One grant read when there is nothing to do.
    async fn withdraw_if_granted(&self, ctx: &Ctx, parsed: &ParsedManifest) {
        if !ctx.restricts_blobs() {
            return;
        }
        if let Err(e) = self.inner.revoke_referenced(&ctx.local, parsed).await {
            tracing::warn!(repository = %ctx.local, error = %e, "withdrawing the grants of a refused manifest failed");
        }
    }

    fn respond(m: Manifest, status: CacheStatus) -> ManifestResponse {
        ManifestResponse {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
            status,
        }
    }

    pub(super) async fn manifest_by_digest(
        &self,
        ctx: &Ctx,
        d: &Digest,
    ) -> Result<ManifestResponse> {
        let reference = Reference::Digest(d.clone());
        // The grant first: it usually names the media type, so the
        // manifest's own record need not be read.
        let grant = self.inner.entitlement(&ctx.local, d).await?;
        let known_type = grant
            .as_ref()
            .and_then(|g| std::str::from_utf8(g).ok())
            .filter(|t| media_types::ALL_MANIFESTS.contains(t))
            .map(str::to_owned);
        if let Some(m) = self.load_manifest_as(d, known_type).await? {
            if grant.is_none() {
                if ctx.store_only() {
                    // Only this repository's upstream could vouch for it.
                    return Err(super::store_only::manifest_not_cached(ctx, &reference));
                }
                // Stored through another repository: this one's upstream must vouch for it.
                if ctx.restricts_blobs() && ctx.is_scanner() {
                    self.head_manifest_upstream(ctx, &reference).await?;
                } else {
                    self.confirm_manifest(ctx, d).await?;
                }
            }
            self.admit_and_grant(ctx, &reference, &m).await?;
            return Ok(Self::respond(m, CacheStatus::Hit));
        }
        if ctx.store_only() {
            return Err(super::store_only::manifest_not_cached(ctx, &reference));
        }
        let m = self.fetch_manifest(ctx, &reference, None).await?;
        Ok(Self::respond(m, CacheStatus::Miss))
    }

    pub(super) async fn manifest_by_tag(&self, ctx: &Ctx, tag: &Tag) -> Result<ManifestResponse> {
        let inner = &self.inner;
        let key = keys::tag(&ctx.local, tag);
        let record = match inner.hot.tag(&key) {
            Some(rec) => Some(rec),
            None => {
                let rec = inner
                    .store
                    .get_meta(&key)
                    .await?
                    .and_then(|b| TagRecord::decode(&b));
                if let Some(r) = &rec {
                    inner.hot.keep_tag(&key, r);
                }
                rec
            }
        };
        let policy = ctx.policy().clone();
        let now = inner.clock.now();
        let reference = Reference::Tag(tag.clone());
        let mut cached = None;
        let mut age = Duration::MAX;
        if let Some(rec) = &record
            && let Some(m) = self.load_manifest(&rec.digest).await?
        {
            age = now.duration_since(rec.confirmed).unwrap_or_default();
            // A store-only caller takes the tag as last recorded.
            let fresh = ctx.store_only()
                || match policy.tag_freshness {
                    TagFreshness::Pinned => true,
                    // A sync asks whatever the tag's TTL says; a pinned tag stays.
                    _ if ctx.job => false,
                    TagFreshness::Ttl(ttl) => age < ttl,
                    TagFreshness::Revalidate => false,
                };
            if fresh {
                self.admit_and_grant(ctx, &reference, &m).await?;
                return Ok(Self::respond(m, CacheStatus::Hit));
            }
            if age < inner.opts.revalidate_window {
                // Confirmed a moment ago (by this request's neighbours).
                self.admit_and_grant(ctx, &reference, &m).await?;
                return Ok(Self::respond(m, CacheStatus::Revalidated));
            }
            if let Err(e) = self.not_remembered_missing(ctx, tag) {
                // Remembered as gone: served if the rule serves what was withdrawn.
                return match self.serve_withdrawn(ctx, tag, rec, &m, &e).await? {
                    Some(r) => Ok(r),
                    None => Err(e),
                };
            }
            match self.revalidate(ctx, tag, rec).await {
                Ok(head) if head.digest == m.digest => {
                    self.admit_and_grant(ctx, &reference, &m).await?;
                    return Ok(Self::respond(m, CacheStatus::Revalidated));
                }
                Ok(_) => {}
                Err(e) if withdrawal(&e) && policy.serve_withdrawn.is_some() => {
                    if let Some(r) = self.serve_withdrawn(ctx, tag, rec, &m, &e).await? {
                        return Ok(r);
                    }
                    // Past the window: as without the option.
                    if matches!(e, Error::ManifestUnknown { .. } | Error::Remembered { .. }) {
                        return Err(e);
                    }
                    if age <= policy.stale_if_error && !ctx.job {
                        self.admit_and_grant(ctx, &reference, &m).await?;
                        return Ok(Self::respond(m, CacheStatus::Stale));
                    }
                    return Err(e);
                }
                Err(e) if matches!(e, Error::ManifestUnknown { .. } | Error::Remembered { .. }) => {
                    return Err(e);
                }
                Err(e) => {
                    if age <= policy.stale_if_error && !ctx.job {
                        tracing::warn!(repo = %ctx.local, %tag, error = %e, "upstream failed; serving cached tag");
                        self.admit_and_grant(ctx, &reference, &m).await?;
                        return Ok(Self::respond(m, CacheStatus::Stale));
                    }
                    return Err(e);
                }
            }
            cached = Some(m);
        } else {
            self.not_remembered_missing(ctx, tag)?;
        }
        if ctx.store_only() {
            return Err(super::store_only::manifest_not_cached(ctx, &reference));
        }
        let observed = record.as_ref().map(|r| r.digest.clone());
        match self.fetch_manifest(ctx, &reference, observed).await {
            Ok(m) => Ok(Self::respond(m, CacheStatus::Miss)),
            // Gone between the HEAD and the GET.
            Err(e @ (Error::ManifestUnknown { .. } | Error::Remembered { .. }))
                if cached.is_some() =>
            {
                let (rec, m) = (record.as_ref().expect("cached"), cached.expect("checked"));
                match self.serve_withdrawn(ctx, tag, rec, &m, &e).await? {
                    Some(r) => Ok(r),
                    None => Err(e),
                }
            }
            Err(e) => match cached {
                Some(m)
                    if !matches!(
                        e,
                        Error::ManifestUnknown { .. }
                            | Error::Remembered { .. }
                            | Error::Denied { .. }
                    ) && age <= policy.stale_if_error
                        && !ctx.job =>
                {
                    self.admit_and_grant(ctx, &reference, &m).await?;
                    Ok(Self::respond(m, CacheStatus::Stale))
                }
                _ => Err(e),
            },
        }
    }

    /// Under the rule's `serve_withdrawn`, the cached tag the upstream
    /// just refused (`refusal`: 404, 401 or 403), if the first refusal was
    /// within the window (the first is recorded in the tag's record): as
    /// `X-Cache: stale`, admitted as any serve (a policy's refusal is the
    /// answer then), with an audit event and [`Event::Withdrawn`].
    /// `None` when the rule does not serve it (no option, past the window,
    /// a sync asking).
    async fn serve_withdrawn(
        &self,
        ctx: &Ctx,
        tag: &Tag,
        rec: &TagRecord,
        m: &Manifest,
        refusal: &Error,
    ) -> Result<Option<ManifestResponse>> {
        let (Some(window), false) = (ctx.policy().serve_withdrawn, ctx.job) else {
            return Ok(None);
        };
        let inner = &self.inner;
        let now = inner.clock.now();
        let since = match rec.withdrawn {
            Some(t) => t,
            None => {
                let marked = TagRecord {
                    withdrawn: Some(now),
                    ..rec.clone()
                };
                let key = keys::tag(&ctx.local, tag);
                inner.store.put_meta(&key, marked.encode()).await?;
                inner.hot.keep_tag(&key, &marked);
                now
            }
        };
        let for_ = now.duration_since(since).unwrap_or_default();
        if for_ > window {
            return Ok(None);
        }
        self.admit_and_grant(ctx, &Reference::Tag(tag.clone()), m)
            .await?;
        let withdrawn_for_s = for_.as_secs();
        tracing::warn!(
            target: "audit",
            rule = ctx.rule.name(),
            repository = %ctx.local,
            %tag,
            digest = %m.digest,
            withdrawn_for_s,
            upstream = %refusal,
            "served a tag the upstream withdrew"
        );
        inner.events.event(&Event::Withdrawn {
            rule: ctx.rule.name(),
        });
        Ok(Some(Self::respond(m.clone(), CacheStatus::Stale)))
    }

    /// `Err` with the remembered answer when the upstream said, within
    /// the rule's `negative_ttl`, that it has no `tag` (or no such
    /// repository): counted as a negative answer.
    fn not_remembered_missing(&self, ctx: &Ctx, tag: &Tag) -> Result<()> {
        if ctx.job {
            return Ok(());
        }
        let inner = &self.inner;
        let found = inner
            .negative
            .check(ctx.rule.name(), &ctx.local, Some(tag), inner.clock.now());
        match found {
            None => Ok(()),
            Some(e) => {
                inner.events.event(&Event::NegativeHit {
                    rule: ctx.rule.name(),
                });
                Err(e)
            }
        }
    }

    /// Remembers an upstream's "not found" for `tag` (the rule's
    /// `negative_ttl`); other errors are not remembered.
    fn remember_missing(&self, ctx: &Ctx, tag: &Tag, e: &Error) {
        if matches!(e, Error::ManifestUnknown { .. }) {
            let inner = &self.inner;
            inner.negative.remember(
                ctx.rule.name(),
                &ctx.local,
                Some(tag),
                e.code(),
                inner.clock.now(),
                ctx.policy().negative_ttl,
            );
        }
    }

    /// Fetches a manifest from the upstream, once however many ask at the
    /// same time, verifies, admits and stores it (and, for a tag, records
    /// it). `observed` is the tag's digest when the caller looked.
    ///
    /// The fetch runs detached and within `manifest_timeout`: a client that
    /// gives up neither cancels it for the others nor leaves it half done
    /// for the next one, and at most `max_manifest_fetches` run at once.
    async fn fetch_manifest(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        observed: Option<Digest>,
    ) -> Result<Manifest> {
        let inner = &self.inner;
        // A scanner's fetch is not admitted: never share it with a client's.
        let key = format!(
            "{}/{}@{}->{}{}",
            ctx.rule.registry(),
            ctx.upstream_repo,
            reference,
            ctx.local,
            if ctx.is_scanner() { "#scanner" } else { "" }
        );
        inner
            .manifest_flights
            .join_or_start(
                key,
                || {
                    format!(
                        "manifest {}:{reference} from {}",
                        ctx.upstream_repo,
                        ctx.rule.registry()
                    )
                },
                || {
                    let (this, ctx, reference) = (self.clone(), ctx.clone(), reference.clone());
                    async move { this.fetch_manifest_once(&ctx, &reference, observed).await }
                },
            )
            .map_err(flights::busy)?
            .await
    }

    /// Asks the upstream whether the tag still names `rec.digest` (a
    /// `HEAD`), once however many ask at the same time; when it does, the
    /// confirmation is recorded, so for `revalidate_window` nobody asks again.
    async fn revalidate(&self, ctx: &Ctx, tag: &Tag, rec: &TagRecord) -> Result<ManifestHead> {
        let inner = &self.inner;
        let key = format!(
            "{}/{}:{tag}->{}",
            ctx.rule.registry(),
            ctx.upstream_repo,
            ctx.local
        );
        inner
            .head_flights
            .join_or_start(
                key,
                || {
                    format!(
                        "HEAD {}:{tag} at {}",
                        ctx.upstream_repo,
                        ctx.rule.registry()
                    )
                },
                || {
                    let (this, ctx, tag, rec) =
                        (self.clone(), ctx.clone(), tag.clone(), rec.clone());
                    async move {
                        // Answered while this flight was being asked for?
                        let now = this.inner.clock.now();
                        let name = ctx.rule.name();
                        let remembered =
                            this.inner.negative.check(name, &ctx.local, Some(&tag), now);
                        if let (Some(e), false) = (remembered, ctx.job) {
                            return Err(e);
                        }
                        let head = this
                            .head_manifest_upstream(&ctx, &Reference::Tag(tag.clone()))
                            .await
                            .inspect_err(|e| this.remember_missing(&ctx, &tag, e))?;
                        if head.digest == rec.digest {
                            // Confirmed: no longer withdrawn, if it was.
                            let confirmed = TagRecord {
                                confirmed: this.inner.clock.now(),
                                withdrawn: None,
                                ..rec
                            };
                            let key = keys::tag(&ctx.local, &tag);
                            this.inner.store.put_meta(&key, confirmed.encode()).await?;
                            this.inner.hot.keep_tag(&key, &confirmed);
                        }
                        Ok(head)
                    }
                },
            )
            .map_err(flights::busy)?
            .await
    }

    async fn fetch_manifest_once(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        observed: Option<Digest>,
    ) -> Result<Manifest> {
        let inner = &self.inner;
        if let Reference::Tag(tag) = reference {
            // A tag that changed since the caller looked was refreshed by a
            // flight that just ended: use it instead of asking again.
            let rec = inner
                .store
                .get_meta(&keys::tag(&ctx.local, tag))
                .await?
                .and_then(|b| TagRecord::decode(&b));
            if let Some(rec) = rec
                && Some(&rec.digest) != observed.as_ref()
                && let Some(m) = self.load_manifest(&rec.digest).await?
            {
                return Ok(m);
            }
        }
        if let (Reference::Tag(tag), false) = (reference, ctx.job) {
            // Answered "not found" while this flight was being asked for:
            // a flight that ends as another starts costs no second request.
            let now = inner.clock.now();
            if let Some(e) = inner
                .negative
                .check(ctx.rule.name(), &ctx.local, Some(tag), now)
            {
                return Err(e);
            }
        }
        let registry = ctx.rule.registry();
        // The upstream gets manifest_timeout (retries included); the
        // flight's own limit adds MAX_ADMISSION for the hooks, which bound
        // their own waits (a scan gate answers 503 after its `wait`).
        let limit = inner.opts.manifest_timeout;
        let fetch = inner.call(UpstreamCall::Manifest, || {
            ctx.upstream
                .manifest(&ctx.upstream_repo, reference, media_types::ALL_MANIFESTS)
        });
        let fetched = crate::runtime::timeout(&*inner.clock, limit, fetch)
            .await
            .unwrap_or_else(|| {
                Err(Error::timeout(format!(
                    "manifest {}:{reference} from {registry} took longer than {limit:?}",
                    ctx.upstream_repo
                )))
            })
            .map_err(|e| e.blame_upstream(registry));
        let mut m = match fetched {
            Ok(m) => m,
            Err(e) => {
                self.upstream_error(ctx, &e);
                if let Reference::Tag(tag) = reference {
                    self.remember_missing(ctx, tag, &e);
                }
                return Err(e);
            }
        };
        if let Reference::Tag(tag) = reference {
            inner
                .negative
                .forget(ctx.rule.name(), &ctx.local, Some(tag));
        }
        let checked = self.check_fetched(&m, reference);
        let parsed = match checked {
            Ok(p) => p,
            Err(e) => {
                let e = e.blame_upstream(registry);
                self.upstream_error(ctx, &e);
                return Err(e);
            }
        };
        // Serve a manifest media type, whatever the upstream's Content-Type said.
        m.media_type = parsed.served_media_type(&m.media_type).to_owned();
        // Held in memory (verified) while admission runs, stored only
        // after: a hook that reads it back meanwhile (a vulnerability
        // scanner pulling through this cache) gets it without a second
        // upstream fetch; a client gets it only once admitted; nothing
        // refused is kept.
        inner
            .hot
            .keep_content(&m.digest, m.bytes.clone(), Some(m.media_type.clone()));
        if let Err(e) = self.admit(ctx, reference, &m).await {
            inner.hot.forget(&m.digest);
            return Err(e);
        }
        let store = &inner.store;
        store.put(&m.digest, m.bytes.clone()).await?;
        store.touch(&m.digest, inner.clock.now()).await?;
        store
            .put_meta(
                &keys::manifest(&m.digest),
                Bytes::from(m.media_type.clone()),
            )
            .await?;
        // A scanner's read grants nothing: a client of a gated rule gets
        // this manifest and its content once admitted itself.
        let grants = !(ctx.restricts_blobs() && ctx.is_scanner());
        if grants {
            inner
                .entitle_manifest(&ctx.local, &m.digest, &m.media_type)
                .await?;
        }
        for (desc, platform) in &parsed.manifests {
            if let Some(p) = platform {
                store
                    .put_meta(&keys::platform(&desc.digest), Bytes::from(p.to_string()))
                    .await?;
                inner.hot.keep_platform(&desc.digest, Some(p.clone()));
            }
        }
        if !grants {
            return Ok(m);
        }
        inner.entitle_referenced(&ctx.local, &parsed).await?;
        if let Reference::Tag(tag) = reference {
            let rec = TagRecord::new(m.digest.clone(), m.media_type.clone(), inner.clock.now());
            let key = keys::tag(&ctx.local, tag);
            store.put_meta(&key, rec.encode()).await?;
            inner.hot.keep_tag(&key, &rec);
        }
        Ok(m)
    }

    /// Under a gated rule, a client admitted to a stored manifest gets
    /// grants to what it references, if it has none yet (the manifest may
    /// have been stored by a scanner's read, which grants nothing).
    async fn grant_referenced(
        &self,
        ctx: &Ctx,
        m: &Manifest,
        parsed: Option<ParsedManifest>,
    ) -> Result<()> {
        if !ctx.restricts_blobs() || ctx.is_scanner() {
            return Ok(());
        }
        let parsed = match parsed {
            Some(p) => p,
            None => ParsedManifest::parse(&m.bytes)?,
        };
        // Every digest is checked (from memory, mostly): grants of a
        // manifest refused since may have taken some it shares.
        for d in super::entitlement::vouched_by(&parsed) {
            if !self.inner.is_entitled(&ctx.local, d).await? {
                self.inner.entitle(&ctx.local, d).await?;
            }
        }
        Ok(())
    }

    /// Checks a manifest from the upstream: size, digest (never trusting
    /// the upstream's word for it) and structure.
    fn check_fetched(&self, m: &Manifest, reference: &Reference) -> Result<ParsedManifest> {
        let max = self.inner.opts.max_manifest_size;
        if m.bytes.len() > max {
            return Err(Error::manifest_invalid(format!(
                "manifest of {} bytes exceeds the limit of {max} bytes",
                m.bytes.len()
            )));
        }
        // Hash once, against what was asked for (or what it announced).
        let expected = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(_) => &m.digest,
        };
        let actual = Digest::compute(expected.algorithm(), &m.bytes);
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        ParsedManifest::parse(&m.bytes)
    }
}

/// Whether an upstream's answer about a tag withdraws it (rather than an
/// outage): not found (404, and a "not found" remembered), refused
/// credentials (401) or access denied (403). Asked of a `HEAD`'s answer,
/// which no admission policy takes part in.
fn withdrawal(e: &Error) -> bool {
    matches!(
        e,
        Error::ManifestUnknown { .. }
            | Error::Remembered { .. }
            | Error::NameUnknown { .. }
            | Error::Denied { .. }
            | Error::Upstream {
                code: Some(crate::error::ErrorCode::Unauthorized),
                ..
            }
    )
}
