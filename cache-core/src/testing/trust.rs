//! Trust material for tests (features `testing` and `trust`): a
//! Sigstore-like instance (a Fulcio-like CA with an intermediate, leaf
//! certificates with Fulcio's OIDC issuer extension and an embedded SCT,
//! a Rekor-like log whose key signs entry timestamps and checkpoints, a CT
//! log) that writes its `trusted_root.json`, signs as cosign lays
//! signatures and attestations out (`.sig`/`.att` layer annotations) and
//! as Sigstore bundles; and a Notation CA with signers that write JWS and
//! COSE envelopes. Everything is made here, offline, with `rcgen`, `p256`
//! and `coset`; keys derive from a seed, so runs repeat.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

use crate::cosign::{
    BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, SIGNATURE_ANNOTATION,
};
use crate::digest::Digest;

fn b64(b: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A P-256 key derived from `seed`.
pub fn p256_key(seed: &str) -> SigningKey {
    let mut i = 0u32;
    loop {
        let d = Sha256::digest(format!("{seed}/{i}"));
        if let Ok(k) = SigningKey::from_slice(&d) {
            return k;
        }
        i += 1;
    }
}

fn rcgen_key(k: &SigningKey) -> KeyPair {
    let pem = k.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
    KeyPair::from_pem(&pem).expect("rcgen key")
}

/// A key's SubjectPublicKeyInfo, DER.
pub fn spki_der(k: &SigningKey) -> Vec<u8> {
    k.verifying_key()
        .to_public_key_der()
        .expect("spki")
        .as_bytes()
        .to_vec()
}

/// A key's PEM `PUBLIC KEY`.
pub fn public_pem(k: &SigningKey) -> String {
    k.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem")
}

/// An ECDSA P-256 SHA-256 signature, DER.
pub fn sign_der(k: &SigningKey, msg: &[u8]) -> Vec<u8> {
    let s: Signature = k.sign(msg);
    s.to_der().as_bytes().to_vec()
}

/// An ECDSA P-256 SHA-256 signature, r||s.
pub fn sign_fixed(k: &SigningKey, msg: &[u8]) -> Vec<u8> {
    let s: Signature = k.sign(msg);
    s.to_bytes().to_vec()
}

fn to_pem(der: &[u8]) -> String {
    let b = b64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn name(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in parts {
        dn.push(t.clone(), *v);
    }
    dn
}

fn ca_params(
    dn: DistinguishedName,
    constraint: BasicConstraints,
    from: SystemTime,
    to: SystemTime,
) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = from.into();
    p.not_after = to.into();
    p
}

/// A transparency log (Rekor-like) or CT log: a key and a name.
#[derive(Debug, Clone)]
pub struct TestLog {
    /// Its signing key.
    pub key: SigningKey,
    /// Its name (the checkpoint origin) and URL.
    pub url: String,
}

impl TestLog {
    /// A log whose key derives from `seed`.
    pub fn new(seed: &str, url: &str) -> TestLog {
        TestLog {
            key: p256_key(seed),
            url: url.to_owned(),
        }
    }

    /// Its log id: SHA-256 of its key's SubjectPublicKeyInfo.
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(spki_der(&self.key)).into()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "baseUrl": self.url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": b64(spki_der(&self.key)),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            },
            "logId": {"keyId": b64(self.id())}
        })
    }
}

/// How a signature is logged.
#[derive(Debug, Clone)]
pub struct Logging<'a> {
    /// The log that signs the entry.
    pub log: &'a TestLog,
    /// The entry's integrated time.
    pub integrated: SystemTime,
    /// Whether a signed entry timestamp comes with it.
    pub set: bool,
    /// Whether an inclusion proof (and signed checkpoint) comes with it.
    pub proof: bool,
}

/// A leaf certificate made by [`TestSigstore::leaf`].
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The key it certifies.
    pub key: SigningKey,
    /// DER.
    pub der: Vec<u8>,
}

impl Leaf {
    /// PEM.
    pub fn pem(&self) -> String {
        to_pem(&self.der)
    }
}

/// A Sigstore-like instance: Fulcio-like CA (root and intermediate, P-384
/// as Fulcio's), a Rekor-like log and a CT log.
pub struct TestSigstore {
    root_key: KeyPair,
    root: rcgen::Certificate,
    inter_key: KeyPair,
    inter: rcgen::Certificate,
    /// The transparency log.
    pub rekor: TestLog,
    /// The certificate transparency log.
    pub ct: TestLog,
}

/// Fulcio's OIDC issuer extension (v2), as an OID.
const ISSUER_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
const SCT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

fn der_len(n: usize) -> Vec<u8> {
    if n < 128 {
        vec![n as u8]
    } else if n < 256 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

impl TestSigstore {
    /// An instance whose keys derive from `seed`.
    pub fn new(seed: &str) -> TestSigstore {
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 86_400);
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let root = ca_params(
            name(&[
                (DnType::OrganizationName, "sigstore.test"),
                (DnType::CommonName, &format!("{seed} root")),
            ]),
            BasicConstraints::Unconstrained,
            now - 5 * year,
            now + 10 * year,
        )
        .self_signed(&root_key)
        .expect("root");
        let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let mut p = ca_params(
            name(&[
                (DnType::OrganizationName, "sigstore.test"),
                (DnType::CommonName, &format!("{seed} intermediate")),
            ]),
            BasicConstraints::Constrained(0),
            now - 4 * year,
            now + 9 * year,
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.use_authority_key_identifier_extension = true;
        let inter = p
            .signed_by(&inter_key, &root, &root_key)
            .expect("intermediate");
        TestSigstore {
            root_key,
            root,
            inter_key,
            inter,
            rekor: TestLog::new(&format!("{seed}/rekor"), "https://rekor.test"),
            ct: TestLog::new(&format!("{seed}/ct"), "https://ctfe.test"),
        }
    }

    /// The `trusted_root.json` naming this instance's CA and logs.
    pub fn trusted_root(&self) -> String {
        self.trusted_root_of(&[&self.rekor], &[&self.ct])
    }

    /// A `trusted_root.json` with this CA and the given logs.
    pub fn trusted_root_of(&self, tlogs: &[&TestLog], ctlogs: &[&TestLog]) -> String {
        let _ = &self.root_key;
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": tlogs.iter().map(|l| l.json()).collect::<Vec<_>>(),
            "certificateAuthorities": [{
                "subject": {"organization": "sigstore.test", "commonName": "sigstore"},
                "uri": "https://fulcio.test",
                "certChain": {"certificates": [
                    {"rawBytes": b64(self.inter.der())},
                    {"rawBytes": b64(self.root.der())}
                ]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            }],
            "ctlogs": ctlogs.iter().map(|l| l.json()).collect::<Vec<_>>(),
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// The chain above a leaf, PEM: intermediate then root.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.inter.pem(), self.root.pem())
    }

    /// A leaf certificate for `subject` (a URI, or an e-mail address if it
    /// has an `@` and no `:`) from OIDC `issuer`, valid `from` `to`, with
    /// an SCT by this instance's CT log when `sct`.
    pub fn leaf(
        &self,
        issuer: &str,
        subject: &str,
        from: SystemTime,
        to: SystemTime,
        sct: bool,
    ) -> Leaf {
        let key = p256_key(&format!("leaf/{issuer}/{subject}/{}", secs(from)));
        let kp = rcgen_key(&key);
        let make = |extra: Option<CustomExtension>| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name = DistinguishedName::new();
            let san = rcgen::Ia5String::try_from(subject.to_owned()).expect("ia5");
            p.subject_alt_names = vec![if subject.contains('@') && !subject.contains(':') {
                SanType::Rfc822Name(san)
            } else {
                SanType::URI(san)
            }];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
            p.not_before = from.into();
            p.not_after = to.into();
            p.serial_number = Some(rcgen::SerialNumber::from_slice(
                &Sha256::digest(subject.as_bytes())[..16],
            ));
            p.use_authority_key_identifier_extension = true;
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                ISSUER_OID,
                der(0x0c, issuer.as_bytes()),
            )];
            p.custom_extensions.extend(extra);
            p.signed_by(&kp, &self.inter, &self.inter_key)
                .expect("leaf")
        };
        let pre = make(None);
        if !sct {
            return Leaf {
                key,
                der: pre.der().to_vec(),
            };
        }
        // The precertificate's TBS, then the SCT over it, then the
        // certificate with the SCT: the same TBS plus one extension.
        use x509_cert::der::{Decode as _, Encode as _};
        let tbs = x509_cert::Certificate::from_der(pre.der())
            .expect("parse")
            .tbs_certificate
            .to_der()
            .expect("tbs");
        let issuer_spki = x509_cert::Certificate::from_der(self.inter.der())
            .expect("parse")
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .expect("spki");
        let ts = secs(from) as u64 * 1000;
        let mut signed = vec![0u8, 0];
        signed.extend_from_slice(&ts.to_be_bytes());
        signed.extend_from_slice(&[0, 1]);
        signed.extend_from_slice(&Sha256::digest(&issuer_spki));
        signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend_from_slice(&tbs);
        signed.extend_from_slice(&[0, 0]);
        let sig = sign_der(&self.ct.key, &signed);
        let mut sct = vec![0u8];
        sct.extend_from_slice(&self.ct.id());
        sct.extend_from_slice(&ts.to_be_bytes());
        sct.extend_from_slice(&[0, 0]); // no extensions
        sct.extend_from_slice(&[4, 3]); // sha256, ecdsa
        sct.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        sct.extend_from_slice(&sig);
        let mut list = (sct.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&sct);
        let mut tls = (list.len() as u16).to_be_bytes().to_vec();
        tls.extend_from_slice(&list);
        let full = make(Some(CustomExtension::from_oid_content(
            SCT_OID,
            der(0x04, &tls),
        )));
        Leaf {
            key,
            der: full.der().to_vec(),
        }
    }
}

/// RFC 9162's Merkle tree hash of `leaves` (leaf hashes, at least one),
/// computed the way the RFC defines it, as a reference for verifiers.
pub fn merkle_root(leaves: &[Vec<u8>]) -> Vec<u8> {
    if let [one] = leaves {
        return one.clone();
    }
    let k = leaves.len().next_power_of_two() / 2;
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(merkle_root(&leaves[..k]));
    h.update(merkle_root(&leaves[k..]));
    h.finalize().to_vec()
}

/// RFC 9162's inclusion path of leaf `m` in the tree of `leaves`: the
/// sibling subtrees' hashes from the leaf up.
pub fn inclusion_path(m: usize, leaves: &[Vec<u8>]) -> Vec<Vec<u8>> {
    if leaves.len() == 1 {
        return vec![];
    }
    let k = leaves.len().next_power_of_two() / 2;
    let (mut p, sibling) = if m < k {
        (inclusion_path(m, &leaves[..k]), &leaves[k..])
    } else {
        (inclusion_path(m - k, &leaves[k..]), &leaves[..k])
    };
    p.push(merkle_root(sibling));
    p
}

/// A Merkle tree head and the inclusion proof of one leaf, for a tree of
/// `size` leaves where `body` is at `index` (the others are filler).
fn merkle(body: &[u8], index: usize, size: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    fn leaf(b: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(b);
        h.finalize().to_vec()
    }
    let leaves: Vec<Vec<u8>> = (0..size)
        .map(|i| {
            if i == index {
                leaf(body)
            } else {
                leaf(format!("filler {i}").as_bytes())
            }
        })
        .collect();
    (merkle_root(&leaves), inclusion_path(index, &leaves))
}

/// A logged entry: its index, signed entry timestamp and inclusion proof.
struct Entry {
    body: Vec<u8>,
    integrated: i64,
    index: i64,
    log_id: [u8; 32],
    set: Option<Vec<u8>>,
    proof: Option<serde_json::Value>,
}

fn log_entry(body: Vec<u8>, l: &Logging<'_>) -> Entry {
    let index = 5i64;
    let integrated = secs(l.integrated);
    let log_id = l.log.id();
    let canonical = format!(
        r#"{{"body":"{}","integratedTime":{integrated},"logID":"{}","logIndex":{index}}}"#,
        b64(&body),
        hex::encode(log_id)
    );
    let set = l.set.then(|| sign_der(&l.log.key, canonical.as_bytes()));
    let proof = l.proof.then(|| {
        let size = 7;
        let (root, hashes) = merkle(&body, index as usize, size);
        let origin = "rekor.test - 42";
        let text = format!("{origin}\n{size}\n{}\n", b64(&root));
        let mut sig = log_id[..4].to_vec();
        sig.extend(sign_der(&l.log.key, text.as_bytes()));
        let note = format!("{text}\n\u{2014} rekor.test {}\n", b64(sig));
        serde_json::json!({
            "logIndex": index.to_string(),
            "rootHash": b64(&root),
            "treeSize": size.to_string(),
            "hashes": hashes.iter().map(b64).collect::<Vec<_>>(),
            "checkpoint": {"envelope": note}
        })
    });
    Entry {
        body,
        integrated,
        index,
        log_id,
        set,
        proof,
    }
}

impl Entry {
    fn cosign_annotation(&self) -> String {
        serde_json::json!({
            "SignedEntryTimestamp": self.set.as_ref().map(b64).unwrap_or_default(),
            "Payload": {
                "body": b64(&self.body),
                "integratedTime": self.integrated,
                "logIndex": self.index,
                "logID": hex::encode(self.log_id),
            }
        })
        .to_string()
    }

    fn bundle_json(&self) -> serde_json::Value {
        let mut e = serde_json::json!({
            "logIndex": self.index.to_string(),
            "logId": {"keyId": b64(self.log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": self.integrated.to_string(),
            "canonicalizedBody": b64(&self.body),
        });
        if let Some(set) = &self.set {
            e["inclusionPromise"] = serde_json::json!({"signedEntryTimestamp": b64(set)});
        }
        if let Some(p) = &self.proof {
            e["inclusionProof"] = p.clone();
        }
        e
    }
}

/// Cosign's simple signing payload naming `d`.
pub fn simple_signing(repo: &str, d: &Digest) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repo}"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// An in-toto statement (v1) about `d`.
pub fn statement(d: &Digest, predicate_type: &str, predicate: serde_json::Value) -> Vec<u8> {
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "image", "digest": {d.algorithm().as_str(): d.hex()}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    })
    .to_string()
    .into_bytes()
}

fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The layer annotations of a keyless cosign signature of `payload` by
/// `leaf` (as `cosign sign` writes them), logged as `logging` says (or not).
pub fn cosign_signature(
    sigstore: &TestSigstore,
    leaf: &Leaf,
    payload: &[u8],
    logging: Option<Logging<'_>>,
) -> BTreeMap<String, String> {
    let sig = sign_der(&leaf.key, payload);
    let mut a = BTreeMap::from([
        (SIGNATURE_ANNOTATION.to_owned(), b64(&sig)),
        (CERTIFICATE_ANNOTATION.to_owned(), leaf.pem()),
        (CHAIN_ANNOTATION.to_owned(), sigstore.chain_pem()),
    ]);
    if let Some(l) = logging {
        let body = serde_json::json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))}},
                "signature": {"content": b64(&sig), "publicKey": {"content": b64(leaf.pem())}}
            }
        })
        .to_string()
        .into_bytes();
        a.insert(
            BUNDLE_ANNOTATION.to_owned(),
            log_entry(body, &l).cosign_annotation(),
        );
    }
    a
}

/// A DSSE envelope of `statement` signed by `key`, and its signature.
fn envelope(key: &SigningKey, statement: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let t = "application/vnd.in-toto+json";
    let sig = sign_der(key, &pae(t, statement));
    (
        serde_json::json!({
            "payloadType": t,
            "payload": b64(statement),
            "signatures": [{"keyid": "", "sig": b64(&sig)}]
        }),
        sig,
    )
}

/// A cosign attestation layer (`cosign attest`, `.att` tag): the DSSE
/// envelope's bytes and the layer annotations.
pub fn cosign_attestation(
    sigstore: &TestSigstore,
    leaf: &Leaf,
    statement: &[u8],
    predicate_type: &str,
    logging: Option<Logging<'_>>,
) -> (Vec<u8>, BTreeMap<String, String>) {
    let (env, sig) = envelope(&leaf.key, statement);
    let mut a = BTreeMap::from([
        (SIGNATURE_ANNOTATION.to_owned(), String::new()),
        (CERTIFICATE_ANNOTATION.to_owned(), leaf.pem()),
        (CHAIN_ANNOTATION.to_owned(), sigstore.chain_pem()),
        ("predicateType".to_owned(), predicate_type.to_owned()),
    ]);
    if let Some(l) = logging {
        let body = serde_json::json!({
            "apiVersion": "0.0.2",
            "kind": "intoto",
            "spec": {"content": {
                "envelope": {
                    "payloadType": "application/vnd.in-toto+json",
                    "signatures": [{"sig": b64(b64(&sig)), "publicKey": b64(leaf.pem())}]
                },
                "hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(env.to_string()))},
                "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(statement))}
            }}
        })
        .to_string()
        .into_bytes();
        a.insert(
            BUNDLE_ANNOTATION.to_owned(),
            log_entry(body, &l).cosign_annotation(),
        );
    }
    (env.to_string().into_bytes(), a)
}

/// A Sigstore bundle v0.3 of `statement` in a DSSE envelope signed by
/// `leaf`, with its log entry (as cosign 3 attaches signatures and
/// attestations through the referrers API).
pub fn bundle(leaf: &Leaf, statement: &[u8], logging: Logging<'_>) -> Vec<u8> {
    let (env, sig) = envelope(&leaf.key, statement);
    let body = serde_json::json!({
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(env.to_string()))},
            "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(statement))},
            "signatures": [{"signature": b64(&sig), "verifier": b64(leaf.pem())}]
        }
    })
    .to_string()
    .into_bytes();
    let entry = log_entry(body, &logging);
    serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "certificate": {"rawBytes": b64(&leaf.der)},
            "tlogEntries": [entry.bundle_json()],
            "timestampVerificationData": {}
        },
        "dsseEnvelope": env
    })
    .to_string()
    .into_bytes()
}

/// Adds a cosign signature manifest of one layer to `repo` of `up`, tagged
/// `sha256-<hex>.sig` for `signed`, as `cosign sign` pushes it.
pub fn push_cosign_signature(
    up: &crate::testing::FakeUpstream,
    repo: &crate::RepoName,
    signed: &Digest,
    payload: &[u8],
    annotations: &BTreeMap<String, String>,
) -> Digest {
    let pd = up.add_blob(repo, bytes::Bytes::copy_from_slice(payload));
    let cd = up.add_blob(repo, bytes::Bytes::from_static(b"{}"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": 2},
        "layers": [{
            "mediaType": crate::cosign::SIMPLE_SIGNING,
            "digest": pd.as_str(),
            "size": payload.len(),
            "annotations": annotations,
        }]
    });
    let tag = crate::cosign::signature_tag(signed).expect("a sha256 digest");
    up.add_manifest(
        repo,
        Some(&tag),
        bytes::Bytes::from(manifest.to_string()),
        crate::media_types::OCI_MANIFEST,
    )
}

/// A Notation CA: a root that issues signing certificates.
pub struct TestNotation {
    key: KeyPair,
    root: rcgen::Certificate,
}

impl std::fmt::Debug for TestNotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNotation").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TestSigstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSigstore")
            .field("rekor", &self.rekor.url)
            .finish_non_exhaustive()
    }
}

/// An RSA public key (`RSAPublicKey` DER) for rcgen.
struct RsaPublic(Vec<u8>);

impl rcgen::PublicKeyData for RsaPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A Notation signer: its key and chain (leaf first, root last).
#[derive(Debug, Clone)]
pub struct NotationSigner {
    /// The signing key.
    pub key: NotationKey,
    /// The chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
}

/// A Notation signing key: ECDSA P-256 (ES256) or RSA 2048 (PS256, as
/// `notation cert generate-test` makes).
#[derive(Debug, Clone)]
pub enum NotationKey {
    /// ES256.
    P256(SigningKey),
    /// PS256, the PKCS#1 `RSAPrivateKey` DER.
    Rsa(Vec<u8>),
}

/// A 2048-bit RSA key for tests (ring verifies and signs RSA but does not
/// generate keys; made once with `openssl genpkey`).
const TEST_RSA_PKCS1: &str = "MIIEogIBAAKCAQEAs4FlK1AaHb3Ct4FqDh1/mcfR9KcCn3fzzl70jMeZDwD+5YARoKNgoIQvHqbqY2w4VvP7ollKar9nFZvII0eq3Fp8oZxeswh8jTilwaKkZbxR2Mkqz45uEiyiK6EFvLM4MitReSr04wm6eXwpxc0t6bLGahXCs1rUKzApit9718OT3CFUB+zfbGNyAw3aFr90JFv2ezaqd2m8s6y0TqUa7v0+nw0jwkBDW8u8NVJ9Z+ma7OSibZr04i7CTr8aeQKE+XkhmG1CmlCIp8WyerN5R5dxv87lY40dWYoDTMlGpKH9m62lHZOZuHkGX8msCM+1L5oTPKYL+OJtRjlOFUKerwIDAQABAoIBACir28FZj+FHOpQbdW0nT98HAFI/eP+qzQnoR96R5uMYZaiYQOY1vlIAQTDfvuGyBn3lIBGjy5GuNmwV9N3RgiwVMIHpjSdhd98Dg8MA1+DZL24//jwy2Euz4zahcExWCxiK6hXbHstGTAL0l/5iQ9HcmMo2jfvXS5VRf0gg5M14+IAf3U6soaTkUEEutgnb6/198BUH1ccHoKYao46vpGsUhwuhSIDWF6EsGDQ/lZ9yoot+0FO27aiHtl1UzBHQErO5n7RDFx0k1TwGqM27Q6nrSl2g5LUAAvTWd8rkKrbKCihyHF3JyAfdIV8Z7aeFye7TMKQ7eiREFd8DGZhIgbECgYEA4o9VPFsMrZN4+qwxZ6SqmlH+fzaXSLJnIP4jul10lzu75Pb0Il4K/4TimQonjfiKP2w6QXpfxTGJM/AG7GeQeSVLXFzRggCnlKpeZBz1dOhmjxSwu7qEUXoU2zx3QQ9iUv9HBln8MaAer2gjTUsFNEIYiJREyG41Lpw3wRR+MfcCgYEAytTDuTleCvYsWxLz1pWQABZ/61AAp49wFtN+XLkWHi1nNSOeQLZzbNlzI4rASh435Qr13ATYpupcTeQNcXMb3ud/3GfZsKG6tDiBPQQKTFi6BsVV8kCHbTE0FL+eoHyz73XCyiRkiKsDPPKpi+co8AwxBZK9zYlueIVEhMFsywkCgYBWQiw5ppDVJWjSR+0ngNJTnxQ+axJ+Yy5QqXIA6sQRMHUBX+TjkNqvHnEHw437x70bGKG1fFoqQgny9Fgued/PwBtJNy2tSYKEX7lAdKYftLwXjdEcKI9oVgrKzeK5qpnM79Si3m/elRAZyJRoQT/h/ahJl+n4Rb2J2YCAysShUQKBgGqXf7gybrqh/lNqVVx6wu9Y46a9J2rnVYeZY7nExtvbDnb9nefyOhyE9h5Ch6Ur1kH3DZevsE+fsBx68ZmiXY456JbiuKM7iwu0+i4flm3i3vg58l3aDZGTnwQcY3eBsWnxYAmtMGwmOxBnkjRkqb3lGkoMgNSoGbcaihSeNddJAoGABC16KwuJSL+Q7EGnChD8S4OWR2QXPMcw9Zzmby6lZ3hgLhaYn52tUGWa/Q8m28nLg6oNYPchxRJQ/F5JfPxRY37pwLyiJGk6jhX7q5pTUr/wFoOtjaUUI2C/RHHCmMRhgdsOPC934wzFtOsy7g+BrRejQf6MMfF0gJV2rKeyCy4=";

impl NotationKey {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            NotationKey::P256(k) => sign_fixed(k, msg),
            NotationKey::Rsa(der) => {
                let kp = ring::signature::RsaKeyPair::from_der(der).expect("rsa key");
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(
                    &ring::signature::RSA_PSS_SHA256,
                    &ring::rand::SystemRandom::new(),
                    msg,
                    &mut sig,
                )
                .expect("rsa signature");
                sig
            }
        }
    }

    fn jws_alg(&self) -> &'static str {
        match self {
            NotationKey::P256(_) => "ES256",
            NotationKey::Rsa(_) => "PS256",
        }
    }

    fn cose_alg(&self) -> coset::iana::Algorithm {
        match self {
            NotationKey::P256(_) => coset::iana::Algorithm::ES256,
            NotationKey::Rsa(_) => coset::iana::Algorithm::PS256,
        }
    }
}

impl TestNotation {
    /// A CA named `name`.
    pub fn new(name_: &str) -> TestNotation {
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 86_400);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let root = ca_params(
            name(&[
                (DnType::CountryName, "US"),
                (DnType::StateOrProvinceName, "WA"),
                (DnType::OrganizationName, "notation.test"),
                (DnType::CommonName, name_),
            ]),
            BasicConstraints::Unconstrained,
            now - 5 * year,
            now + 10 * year,
        )
        .self_signed(&key)
        .expect("root");
        TestNotation { key, root }
    }

    /// The root certificate, PEM (what goes in a trust store).
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// A signer with subject `C=US, ST=WA, O=<org>, CN=<cn>`, valid `from`
    /// `to`, with an ECDSA P-256 key.
    pub fn signer(&self, org: &str, cn: &str, from: SystemTime, to: SystemTime) -> NotationSigner {
        let key = p256_key(&format!("notation/{org}/{cn}/{}", secs(from)));
        let kp = rcgen_key(&key);
        self.issue(org, cn, from, to, &kp, NotationKey::P256(key))
    }

    /// As [`signer`](Self::signer), with an RSA 2048 key (PS256).
    pub fn rsa_signer(
        &self,
        org: &str,
        cn: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> NotationSigner {
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_RSA_PKCS1)
            .expect("test key");
        let kp = ring::signature::RsaKeyPair::from_der(&der).expect("rsa key");
        use ring::signature::KeyPair as _;
        let spki = RsaPublic(kp.public_key().as_ref().to_vec());
        self.issue(org, cn, from, to, &spki, NotationKey::Rsa(der))
    }

    fn issue(
        &self,
        org: &str,
        cn: &str,
        from: SystemTime,
        to: SystemTime,
        kp: &impl rcgen::PublicKeyData,
        key: NotationKey,
    ) -> NotationSigner {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = name(&[
            (DnType::CountryName, "US"),
            (DnType::StateOrProvinceName, "WA"),
            (DnType::OrganizationName, org),
            (DnType::CommonName, cn),
        ]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.not_before = from.into();
        p.not_after = to.into();
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(kp, &self.root, &self.key).expect("signer");
        NotationSigner {
            key,
            chain: vec![cert.der().to_vec(), self.root.der().to_vec()],
        }
    }
}

/// Notation's signed payload for a target descriptor.
fn notation_payload(media_type: &str, d: &Digest, size: u64) -> Vec<u8> {
    serde_json::json!({"targetArtifact": {"mediaType": media_type, "digest": d.as_str(), "size": size}})
        .to_string()
        .into_bytes()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time")
}

/// A Notation JWS envelope (`application/jose+json`) over the target
/// (`media_type`, digest, size), ES256 or PS256 as the signer's key is,
/// signed at `signed`, expiring at `expiry`.
pub fn notation_jws(
    s: &NotationSigner,
    media_type: &str,
    d: &Digest,
    size: u64,
    signed: SystemTime,
    expiry: Option<SystemTime>,
) -> Vec<u8> {
    let url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut h = serde_json::json!({
        "alg": s.key.jws_alg(),
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": rfc3339(signed),
    });
    if let Some(e) = expiry {
        h["io.cncf.notary.expiry"] = rfc3339(e).into();
        h["crit"] = serde_json::json!(["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"]);
    }
    let protected = url(h.to_string().as_bytes());
    let payload = url(&notation_payload(media_type, d, size));
    let sig = s.key.sign(format!("{protected}.{payload}").as_bytes());
    serde_json::json!({
        "payload": payload,
        "protected": protected,
        "header": {
            "x5c": s.chain.iter().map(b64).collect::<Vec<_>>(),
            "io.cncf.notary.signingAgent": "notation-go/1.3.0"
        },
        "signature": url(&sig)
    })
    .to_string()
    .into_bytes()
}

/// A Notation COSE envelope (`application/cose`), as [`notation_jws`].
pub fn notation_cose(
    s: &NotationSigner,
    media_type: &str,
    d: &Digest,
    size: u64,
    signed: SystemTime,
    expiry: Option<SystemTime>,
) -> Vec<u8> {
    use coset::TaggedCborSerializable as _;
    use coset::cbor::value::Value;
    let time = |t: SystemTime| Value::Tag(1, Box::new(Value::Integer(secs(t).into())));
    let mut crit = vec![coset::RegisteredLabel::Text(
        "io.cncf.notary.signingScheme".into(),
    )];
    let mut b = coset::HeaderBuilder::new()
        .algorithm(s.key.cose_alg())
        .content_type("application/vnd.cncf.notary.payload.v1+json".into())
        .text_value(
            "io.cncf.notary.signingScheme".into(),
            Value::Text("notary.x509".into()),
        )
        .text_value("io.cncf.notary.signingTime".into(), time(signed));
    if let Some(e) = expiry {
        b = b.text_value("io.cncf.notary.expiry".into(), time(e));
        crit.push(coset::RegisteredLabel::Text("io.cncf.notary.expiry".into()));
    }
    let mut protected = b.build();
    protected.crit = crit;
    let unprotected = coset::HeaderBuilder::new()
        .value(
            33,
            Value::Array(s.chain.iter().map(|c| Value::Bytes(c.clone())).collect()),
        )
        .text_value(
            "io.cncf.notary.signingAgent".into(),
            Value::Text("notation-go/1.3.0".into()),
        )
        .build();
    let sign1 = coset::CoseSign1Builder::new()
        .protected(protected)
        .unprotected(unprotected)
        .payload(notation_payload(media_type, d, size))
        .create_signature(b"", |data| s.key.sign(data))
        .build();
    sign1.to_tagged_vec().expect("cose")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signatures::{Artifact, ArtifactKind, Subject, Verifier};
    use crate::trust::{Identity, Pattern, Signers, SigstoreSignatures, TrustedRoot};
    use std::sync::Arc;

    #[test]
    fn the_kit_makes_material_the_verifiers_accept() {
        let s = TestSigstore::new("kit");
        let root = Arc::new(TrustedRoot::from_json(s.trusted_root().as_bytes()).unwrap());
        let now = SystemTime::now();
        let leaf = s.leaf(
            "https://issuer.test",
            "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1",
            now - Duration::from_secs(300),
            now + Duration::from_secs(300),
            true,
        );
        let d = Digest::sha256_of(b"manifest");
        let payload = simple_signing("acme/app", &d);
        let ann = cosign_signature(
            &s,
            &leaf,
            &payload,
            Some(Logging {
                log: &s.rekor,
                integrated: now,
                set: true,
                proof: false,
            }),
        );
        let v = SigstoreSignatures::new(Signers {
            identities: vec![Identity {
                issuer: Pattern::Exact("https://issuer.test".into()),
                subject: Pattern::regex("https://github.com/acme/.+").unwrap(),
            }],
            root: Some(root),
            ..Signers::default()
        });
        let subject = Subject {
            digest: &d,
            size: 10,
            media_type: "m",
            scope: "r/acme/app",
        };
        let a = Artifact {
            kind: ArtifactKind::SimpleSigning,
            found: "tag".into(),
            bytes: payload.into(),
            annotations: ann,
            manifest_annotations: BTreeMap::new(),
        };
        let who = v.verify(&subject, &a, now).unwrap().unwrap();
        assert!(
            who.starts_with("keyless https://github.com/acme/app/"),
            "{who}"
        );
        // A bundle whose log entry has an inclusion proof, and a SET or not.
        let bundled = |set: bool| Artifact {
            kind: ArtifactKind::Bundle,
            bytes: bundle(
                &leaf,
                &statement(
                    &d,
                    crate::signatures::COSIGN_SIGN_PREDICATE,
                    serde_json::json!({}),
                ),
                Logging {
                    log: &s.rekor,
                    integrated: now,
                    set,
                    proof: true,
                },
            )
            .into(),
            annotations: BTreeMap::new(),
            ..a.clone()
        };
        v.verify(&subject, &bundled(true), now).unwrap().unwrap();
        // Without a SET nothing signs the integrated time: refused.
        let e = v
            .verify(&subject, &bundled(false), now)
            .unwrap()
            .unwrap_err();
        assert!(
            format!("{e:?}").contains("integrated time is not signed"),
            "a bundle whose entry has no SET: {e:?}"
        );
    }

    #[test]
    fn notation_envelopes_of_both_formats_and_key_types_verify() {
        use crate::trust::{Notation, NotationTrust};
        let ca = TestNotation::new("kit root");
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let root = crate::trust::cert_for_tests(ca.root.der());
        let doc = serde_json::json!({"version": "1.0", "trustPolicies": [{
            "name": "p", "registryScopes": ["*"],
            "signatureVerification": {"level": "strict"},
            "trustStores": ["ca:kit"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=kit"]
        }]});
        let trust =
            NotationTrust::from_policy(doc.to_string().as_bytes(), |_, _| Ok(vec![root.clone()]))
                .unwrap();
        let v = Notation::new(Arc::new(trust));
        let d = Digest::sha256_of(b"manifest");
        let subject = Subject {
            digest: &d,
            size: 8,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            scope: "r/x",
        };
        for signer in [
            ca.signer("kit", "ec", now - day, now + day),
            ca.rsa_signer("kit", "rsa", now - day, now + day),
        ] {
            for (kind, env) in [
                (
                    ArtifactKind::Jws,
                    notation_jws(&signer, subject.media_type, &d, 8, now, None),
                ),
                (
                    ArtifactKind::Cose,
                    notation_cose(&signer, subject.media_type, &d, 8, now, None),
                ),
            ] {
                let a = Artifact {
                    kind,
                    found: "kit".into(),
                    bytes: env.into(),
                    annotations: BTreeMap::new(),
                    manifest_annotations: BTreeMap::new(),
                };
                let who = v.verify(&subject, &a, now).unwrap();
                assert!(
                    who.as_ref().is_ok_and(|w| w.contains("O=kit")),
                    "{kind:?} {who:?}"
                );
                let wrong = Subject { size: 9, ..subject };
                assert!(
                    v.verify(&wrong, &a, now).unwrap().is_err(),
                    "{kind:?}: size"
                );
            }
        }
    }
}
