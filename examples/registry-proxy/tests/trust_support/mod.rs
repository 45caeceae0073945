//! What the trust tests share: images pushed with skopeo to the Debian
//! distribution registry, and signature material laid out in it as the
//! real tools lay it out: cosign's `sha256-<hex>.sig` and `.att` tags, and
//! referrers (Sigstore bundles, Notation signatures) as manifests with a
//! `subject`, listed in the referrers tag schema's index `sha256-<hex>`
//! (the Debian registry has no referrers API; cosign and notation fall
//! back to the tag schema on such registries).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use cache_core::Digest;
use cache_upstream::testing::{TestImage, TestRegistry, write_artifact, write_image};

use super::common::{Proxy, http};

/// An image `repo:v1` with one layer, pushed; its layout's directory goes with it.
pub fn push(up: &TestRegistry, repo: &str, seed: u64) -> (TestImage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", seed, &[30_000]);
    up.push(&img.layout, "v1", repo).unwrap();
    (img, dir)
}

/// The size of a manifest of a pushed layout.
pub fn manifest_size(img: &TestImage, d: &Digest) -> u64 {
    std::fs::read(img.layout.join("blobs/sha256").join(d.hex()))
        .unwrap()
        .len() as u64
}

fn annotations_json(a: &BTreeMap<String, String>) -> String {
    serde_json::to_string(a).unwrap()
}

/// Pushes a signature manifest of one layer under cosign's tag
/// `sha256-<hex>.<suffix>` (`sig` or `att`).
pub fn push_cosign(
    up: &TestRegistry,
    repo: &str,
    signed: &Digest,
    suffix: &str,
    media_type: &str,
    content: &[u8],
    annotations: &BTreeMap<String, String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("sha256-{}.{suffix}", signed.hex());
    let ann = annotations_json(annotations);
    write_artifact(dir.path(), &tag, &[(media_type, content, &ann)], None, None);
    up.push(dir.path(), &tag, repo).unwrap();
}

/// Attaches an artifact of one layer to `subject` (digest, size, media
/// type) in `repo`: the artifact manifest (with `artifactType` and
/// `subject`) pushed under a tag of its own, and listed in the tag
/// schema's referrers index, as clients of registries without the
/// referrers API do.
pub async fn attach(
    up: &TestRegistry,
    repo: &str,
    subject: (&Digest, u64, &str),
    artifact_type: &str,
    media_type: &str,
    content: &[u8],
    annotations: &BTreeMap<String, String>,
) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("ref-{}", &Digest::sha256_of(content).hex()[..12]);
    let ann = annotations_json(annotations);
    let a = write_artifact(
        dir.path(),
        &tag,
        &[(media_type, content, &ann)],
        Some(artifact_type),
        Some((subject.0, subject.1 as usize, subject.2)),
    );
    up.push(dir.path(), &tag, repo).unwrap();
    let size = std::fs::read(dir.path().join("blobs/sha256").join(a.digest.hex()))
        .unwrap()
        .len();
    let index_url = format!(
        "{}/v2/{repo}/manifests/sha256-{}",
        up.url(),
        subject.0.hex()
    );
    let r = http()
        .get(&index_url)
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    let mut entries: Vec<serde_json::Value> = if r.status() == 200 {
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        v["manifests"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": a.digest.as_str(),
        "size": size,
        "artifactType": artifact_type,
    }));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let r = http()
        .put(&index_url)
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    a.digest
}

/// The proxy's configuration: the registry and `rules`.
pub fn proxy_config(up: &TestRegistry, rules: &str) -> String {
    format!(
        "[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{}\"\nendpoint = \"{}\"\n\n{rules}",
        up.host(),
        up.url()
    )
}

/// A rule `name` for `<host>/<name>/*` with this `[rule.signatures]` body.
pub fn rule(up: &TestRegistry, name: &str, signatures: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{h}/{name}/*\"\ntarget = \"{name}/*\"\n[rule.signatures]\n{signatures}\n\n",
        h = up.host()
    )
}

/// Writes `text` to `dir/name`, returning the path as TOML wants it.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The manifest `reference` of `repo` through the proxy: status and body.
pub async fn get_manifest(proxy: &Proxy, repo: &str, reference: &str) -> (u16, String) {
    let r = http()
        .get(proxy.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Layer GETs the upstream saw for an image.
pub fn layer_gets(up: &TestRegistry, img: &TestImage) -> usize {
    img.layers
        .iter()
        .map(|(d, _)| up.requests("GET", d.hex()))
        .sum()
}
