//! The signature policy in the engine, on an in-process upstream that
//! counts its calls: a keyless verdict is remembered (a warm pull asks the
//! upstream nothing about signatures), a reload with a new policy checks
//! again, and what a refused image references is never fetched.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use cache_core::testing::trust::{self, Logging, TestSigstore};
use cache_core::testing::{FakeUpstream, ManualClock, PushedImage, content};
use cache_core::trust::{Identity, Pattern, Signers, SigstoreSignatures, TrustedRoot};
use cache_core::{
    Accept, CacheBuilder, Error, PullThroughCache, Reference, RepoName, RulePolicy, RuleSpec,
    SignatureMode, SignaturePolicy, Tag,
};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SUBJECT: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1";

fn policy(root: &Arc<TrustedRoot>, subject: &str) -> RulePolicy {
    let signers = Signers::keyless(
        vec![Identity {
            issuer: Pattern::Exact(ISSUER.into()),
            subject: Pattern::Exact(subject.into()),
        }],
        root.clone(),
    );
    RulePolicy {
        signatures: Some(Arc::new(
            SignaturePolicy::new(Vec::new(), SignatureMode::Enforce)
                .with_verifiers(vec![Arc::new(SigstoreSignatures::new(signers))]),
        )),
        ..RulePolicy::default()
    }
}

struct Env {
    cache: PullThroughCache,
    up: Arc<FakeUpstream>,
    clock: ManualClock,
    root: Arc<TrustedRoot>,
    repo: RepoName,
    signed: PushedImage,
    unsigned: PushedImage,
}

fn builder(env_up: &Arc<FakeUpstream>, clock: &ManualClock, p: RulePolicy) -> CacheBuilder {
    PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(cache_store::MemoryStore::new())
        .spawner(cache_core::runtime::TokioRuntime::current())
        .clock(clock.clone())
        .upstream("up.example", env_up.clone())
        .policy("lib", p)
}

fn env() -> Env {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let repo = RepoName::parse("library/app").unwrap();
    let signed = up.push_image(&repo, &Tag::parse("v1").unwrap(), &[content(1, 5000)]);
    let unsigned = up.push_image(&repo, &Tag::parse("v2").unwrap(), &[content(2, 5000)]);
    let sig = TestSigstore::new("engine");
    let now = SystemTime::now();
    let leaf = sig.leaf(
        ISSUER,
        SUBJECT,
        now - Duration::from_secs(300),
        now + Duration::from_secs(300),
        true,
    );
    let payload = trust::simple_signing(repo.as_str(), &signed.manifest);
    let ann = trust::cosign_signature(
        &sig,
        &leaf,
        &payload,
        Some(Logging {
            log: &sig.rekor,
            integrated: now,
            set: true,
            proof: false,
        }),
    );
    trust::push_cosign_signature(&up, &repo, &signed.manifest, &payload, &ann);
    let root = Arc::new(TrustedRoot::from_json(sig.trusted_root().as_bytes()).unwrap());
    let cache = builder(&up, &clock, policy(&root, SUBJECT))
        .build()
        .unwrap();
    Env {
        cache,
        up,
        clock,
        root,
        repo,
        signed,
        unsigned,
    }
}

fn manifest_gets(up: &FakeUpstream) -> u64 {
    up.calls.manifest_gets.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_keyless_verdict_is_remembered_and_a_new_policy_checks_again() {
    let e = env();
    let by_digest = Reference::Digest(e.signed.manifest.clone());
    let m = e
        .cache
        .manifest(&e.repo, &by_digest, &Accept::any())
        .await
        .unwrap();
    assert_eq!(m.digest, e.signed.manifest);
    let after_first = manifest_gets(&e.up);
    for _ in 0..3 {
        e.cache
            .manifest(&e.repo, &by_digest, &Accept::any())
            .await
            .unwrap();
    }
    assert_eq!(
        manifest_gets(&e.up),
        after_first,
        "warm pulls look up no signature"
    );
    // A reload builds a new policy (its trust root re-read): checked again.
    e.cache
        .reconfigure(builder(&e.up, &e.clock, policy(&e.root, SUBJECT)))
        .unwrap();
    e.cache
        .manifest(&e.repo, &by_digest, &Accept::any())
        .await
        .unwrap();
    assert!(manifest_gets(&e.up) > after_first, "the new policy looked");
    // ... and a policy that wants someone else refuses.
    e.cache
        .reconfigure(builder(
            &e.up,
            &e.clock,
            policy(&e.root, "https://github.com/acme/other/x@refs/tags/v1"),
        ))
        .unwrap();
    let err = e
        .cache
        .manifest(&e.repo, &by_digest, &Accept::any())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Denied { .. }) && err.to_string().contains("wanted issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unsigned_image_is_refused_and_its_layers_are_never_fetched() {
    let e = env();
    let err = e
        .cache
        .manifest(
            &e.repo,
            &Reference::Tag(Tag::parse("v2").unwrap()),
            &Accept::any(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no signature"), "{err}");
    for (d, _) in &e.unsigned.layers {
        assert!(e.cache.blob(&e.repo, d, None).await.is_err());
    }
    assert_eq!(e.up.calls.blob_gets.load(Ordering::SeqCst), 0);
}
