//! `RegistryClient` and `OciLayout` against real parts: the Debian
//! distribution registry on 127.0.0.1, images pushed with skopeo.

use cache_core::{
    ByteRange, Digest, Error, ErrorCode, Reference, Registry, RepoName, Tag, TagPage, Upstream,
    media_types,
};
use cache_upstream::testing::{TestRegistry, write_image, write_index};
use cache_upstream::{
    ClientOptions, Credentials, OciLayout, PasswordSource, RegistryClient, Secret,
};
use futures::StreamExt;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn client(reg: &TestRegistry, creds: Option<Credentials>) -> RegistryClient {
    RegistryClient::new(
        Registry::parse(&reg.host()).unwrap(),
        Some(&reg.url()),
        creds,
        ClientOptions::default(),
    )
    .unwrap()
}

async fn read(
    c: &dyn Upstream,
    repo: &RepoName,
    d: &Digest,
    r: Option<ByteRange>,
) -> (u64, std::ops::Range<u64>, Vec<u8>) {
    let b = c.blob(repo, d, r).await.unwrap();
    let mut s = b.stream;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    (b.size, b.range, out)
}

fn creds(user: &str, pw: &str) -> Credentials {
    Credentials::new(user, &PasswordSource::Value(Secret::new(pw))).unwrap()
}

#[tokio::test]
async fn manifests_blobs_ranges_and_tags_from_the_distribution_registry() {
    let reg = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", 1, &[200_000, 3_000]);
    reg.push(&img.layout, "v1", "demo").unwrap();
    let c = client(&reg, None);
    let repo = n("demo");

    let m = c
        .manifest(
            &repo,
            &Reference::Tag(Tag::parse("v1").unwrap()),
            media_types::ALL_MANIFESTS,
        )
        .await
        .unwrap();
    assert_eq!(
        (&m.digest, m.media_type.as_str()),
        (&img.digest, media_types::OCI_MANIFEST)
    );
    let by_digest = c
        .manifest(&repo, &Reference::Digest(img.digest.clone()), &[])
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, m.bytes);
    let head = c
        .head_manifest(&repo, &Reference::Tag(Tag::parse("v1").unwrap()), &[])
        .await
        .unwrap();
    assert_eq!(
        (head.digest, head.size),
        (img.digest.clone(), m.bytes.len() as u64)
    );

    let (d, size) = img.layers[0].clone();
    let (total, span, bytes) = read(&c, &repo, &d, None).await;
    assert_eq!((total, span.end), (size, size));
    assert!(d.verifies(&bytes));
    let (_, span, part) = read(&c, &repo, &d, Some(ByteRange::Inclusive(100, 199))).await;
    assert_eq!((span, part.as_slice()), (100..200, &bytes[100..200]));
    assert_eq!(c.head_blob(&repo, &d).await.unwrap(), size);

    let missing = Digest::sha256_of(b"nope");
    assert_eq!(
        c.blob(&repo, &missing, None).await.unwrap_err().code(),
        ErrorCode::BlobUnknown
    );
    let e = c
        .manifest(&repo, &Reference::Tag(Tag::parse("nope").unwrap()), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ManifestUnknown);

    reg.push(&img.layout, "v1", "demo").unwrap();
    let tags = c.tags(&repo, &TagPage::default()).await.unwrap();
    assert_eq!(tags, vec![Tag::parse("v1").unwrap()]);
    assert_eq!(
        c.tags(&n("absent"), &TagPage::default())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NameUnknown
    );
}

#[tokio::test]
async fn an_index_and_its_platform_manifests_come_through_byte_exact() {
    let reg = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_index(dir.path(), "multi", 2, 10_000);
    reg.push(&img.layout, "multi", "demo/multi").unwrap();
    let c = client(&reg, None);
    let repo = n("demo/multi");
    let m = c
        .manifest(
            &repo,
            &Reference::Tag(Tag::parse("multi").unwrap()),
            media_types::ALL_MANIFESTS,
        )
        .await
        .unwrap();
    assert_eq!(
        (&m.digest, m.media_type.as_str()),
        (&img.digest, media_types::OCI_INDEX)
    );
    let local = std::fs::read(img.layout.join("blobs/sha256").join(img.digest.hex())).unwrap();
    assert_eq!(
        m.bytes.as_ref(),
        local.as_slice(),
        "the index is byte-identical"
    );
    for (d, _) in &img.platforms {
        let p = c
            .manifest(
                &repo,
                &Reference::Digest(d.clone()),
                media_types::ALL_MANIFESTS,
            )
            .await
            .unwrap();
        assert_eq!(&p.digest, d);
    }
}

#[tokio::test]
async fn htpasswd_basic_auth_works_and_a_refused_password_is_an_upstream_error() {
    let reg = TestRegistry::start_with_auth("alice", "s3cret-pw").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", 3, &[5_000]);
    reg.push(&img.layout, "v1", "private/app").unwrap();
    let repo = n("private/app");
    let tag = Reference::Tag(Tag::parse("v1").unwrap());

    let ok = client(&reg, Some(creds("alice", "s3cret-pw")));
    assert_eq!(
        ok.manifest(&repo, &tag, &[]).await.unwrap().digest,
        img.digest
    );
    let (_, _, bytes) = read(&ok, &repo, &img.layers[0].0, None).await;
    assert!(img.layers[0].0.verifies(&bytes));

    let wrong = client(&reg, Some(creds("alice", "wrong")));
    let e = wrong.manifest(&repo, &tag, &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Upstream {
                code: Some(ErrorCode::Unauthorized),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.code().http_status(), 502, "not the client's to fix");
    assert!(
        !e.to_string().contains("wrong"),
        "the password never appears in errors: {e}"
    );

    let anonymous = client(&reg, None);
    let e = anonymous.manifest(&repo, &tag, &[]).await.unwrap_err();
    assert_eq!(e.code().http_status(), 502, "{e}");
    // Each client asked at most twice per request: no 401 loop.
    assert!(reg.requests("GET", "/manifests/") <= 6, "{}", reg.log());
}

#[tokio::test]
async fn oci_layout_serves_what_the_tests_generate() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_index(dir.path(), "multi", 4, 2_000);
    let l = OciLayout::open(dir.path()).unwrap();
    let repo = n("any/name");
    let m = l
        .manifest(&repo, &Reference::Tag(Tag::parse("multi").unwrap()), &[])
        .await
        .unwrap();
    assert_eq!(
        (&m.digest, m.media_type.as_str()),
        (&img.digest, media_types::OCI_INDEX)
    );
    let (d, size) = img.layers[1].clone();
    let (total, _, bytes) = read(&l, &repo, &d, None).await;
    assert_eq!(total, size);
    assert!(d.verifies(&bytes));
    let (_, span, part) = read(&l, &repo, &d, Some(ByteRange::Suffix(10))).await;
    assert_eq!(
        (span.end - span.start, part.as_slice()),
        (10, &bytes[bytes.len() - 10..])
    );
    assert_eq!(
        l.tags(&repo, &TagPage::default()).await.unwrap(),
        vec![Tag::parse("multi").unwrap()]
    );
    assert_eq!(
        l.head_blob(&repo, &Digest::sha256_of(b"x"))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::BlobUnknown
    );
    assert!(OciLayout::open("/nonexistent").is_err());
}
