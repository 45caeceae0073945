//! What the access tests share: keys made with openssl, tokens minted with
//! them, bcrypt lines from htpasswd, skopeo pulls with credentials, and
//! counts of what the upstream was asked.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cache_upstream::testing::{TestRegistry, require, skopeo};

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn run(bin: &str, package: &str, args: &[&str]) -> Vec<u8> {
    let exe = require(bin, package).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A P-256 private key (PKCS#8 PEM) written to `dir/name`.
pub fn ec_key(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    run(
        "openssl",
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p.to_str().unwrap(),
        ],
    );
    p
}

/// An RSA key: its private PEM at `dir/name`, its public PEM beside it
/// (`name.pub`), and its modulus, base64url (the JWK's `n`).
pub struct RsaKey {
    pub private: PathBuf,
    pub public_pem: Vec<u8>,
    pub n: String,
}

pub fn rsa_key(dir: &Path, name: &str) -> RsaKey {
    let private = dir.join(name);
    let key = private.to_str().unwrap();
    run(
        "openssl",
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key,
        ],
    );
    let public_pem = run("openssl", "openssl", &["pkey", "-in", key, "-pubout"]);
    let modulus = String::from_utf8(run(
        "openssl",
        "openssl",
        &["rsa", "-in", key, "-noout", "-modulus"],
    ))
    .unwrap();
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    RsaKey {
        private,
        public_pem,
        n: b64url(&bytes),
    }
}

/// A JWKS document of RSA keys `(kid, key)`.
pub fn jwks(keys: &[(&str, &RsaKey)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, k)| serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": k.n, "e": "AQAB"}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT of `claims` signed RS256 with `key`, header `kid`. (Keys go to
/// jsonwebtoken as DER: its PEM feature would bring the `time` crate into
/// the workspace's build, whose `Duration` comparisons make other tests'
/// `assert_eq!(durations, [])` ambiguous.)
pub fn rs256(key: &RsaKey, kid: &str, claims: &serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    let pkcs1 = run(
        "openssl",
        "openssl",
        &[
            "rsa",
            "-in",
            key.private.to_str().unwrap(),
            "-outform",
            "DER",
            "-traditional",
        ],
    );
    let k = jsonwebtoken::EncodingKey::from_rsa_der(&pkcs1);
    jsonwebtoken::encode(&h, claims, &k).unwrap()
}

/// A JWT of `claims` signed ES256 with the P-256 PEM key at `key`.
pub fn es256(key: &Path, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = kid.map(str::to_owned);
    let pkcs8 = run(
        "openssl",
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            key.to_str().unwrap(),
            "-outform",
            "DER",
        ],
    );
    let k = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8);
    jsonwebtoken::encode(&h, claims, &k).unwrap()
}

/// A token's claims, unverified.
pub fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// A token's header, unverified.
pub fn header_of(token: &str) -> serde_json::Value {
    let h = token.split('.').next().expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

/// `token` with its claims replaced by `claims`, its header and signature kept.
pub fn with_claims(token: &str, claims: &serde_json::Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// The bcrypt hash `htpasswd -nbB` makes of `password`.
pub fn bcrypt(password: &str) -> String {
    let line =
        String::from_utf8(run("htpasswd", "apache2-utils", &["-nbB", "u", password])).unwrap();
    line.trim().strip_prefix("u:").unwrap().to_owned()
}

/// SHA-256 of `s`, hex (how `[[auth.token]]` holds a robot token).
pub fn sha256_hex(s: &str) -> String {
    cache_core::Digest::sha256_of(s.as_bytes()).hex().to_owned()
}

/// Every request the upstream's access log shows (GET and HEAD under /v2/).
pub fn upstream_requests(up: &TestRegistry) -> usize {
    up.requests("GET", "") + up.requests("HEAD", "")
}

/// `skopeo copy` of `image` from the proxy at `host` into `dest`, with
/// `--src-creds` when given (the token flow), else anonymous.
pub fn pull_as(host: &str, image: &str, dest: &Path, creds: Option<&str>) -> Result<(), String> {
    let mut args = vec![
        "copy".to_owned(),
        "--insecure-policy".to_owned(),
        "--src-tls-verify=false".to_owned(),
    ];
    match creds {
        Some(c) => args.push(format!("--src-creds={c}")),
        None => args.push("--src-no-creds".to_owned()),
    }
    args.push(format!("docker://{host}/{image}"));
    args.push(format!("dir:{}", dest.display()));
    skopeo(&args)
}
