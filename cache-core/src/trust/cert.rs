//! X.509 certificates and public keys: what the verifiers read from a
//! certificate (validity, subject, SAN, extensions), chain validation
//! (rustls-webpki, at a given time), and signature checks (ring).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature as sig;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::spki;

/// `1.3.6.1.5.5.7.3.3`, code signing, as DER content bytes (for webpki).
pub(crate) const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A parsed certificate and its DER.
#[derive(Clone)]
pub(crate) struct Cert {
    pub(crate) der: Vec<u8>,
    pub(crate) cert: Certificate,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject())
            .finish()
    }
}

impl Cert {
    pub(crate) fn from_der(der: &[u8]) -> Result<Cert, String> {
        let cert =
            Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        Ok(Cert {
            der: der.to_vec(),
            cert,
        })
    }

    /// The first certificate of a PEM text.
    pub(crate) fn from_pem(pem: &str) -> Result<Cert, String> {
        let all = Cert::all_from_pem(pem)?;
        all.into_iter()
            .next()
            .ok_or_else(|| "no PEM certificate".to_owned())
    }

    /// Every `CERTIFICATE` block of a PEM text.
    pub(crate) fn all_from_pem(pem: &str) -> Result<Vec<Cert>, String> {
        let mut out = Vec::new();
        let mut rest = pem;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        while let Some(i) = rest.find(BEGIN) {
            let body = &rest[i + BEGIN.len()..];
            let j = body
                .find(END)
                .ok_or("PEM certificate without its END line")?;
            let b64: String = body[..j].chars().filter(|c| !c.is_whitespace()).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("PEM certificate is not base64: {e}"))?;
            out.push(Cert::from_der(&der)?);
            rest = &body[j + END.len()..];
        }
        Ok(out)
    }

    pub(crate) fn not_before(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_system_time()
    }

    pub(crate) fn not_after(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_system_time()
    }

    /// Whether the certificate is valid at `t`.
    pub(crate) fn valid_at(&self, t: SystemTime) -> bool {
        self.not_before() <= t && t <= self.not_after()
    }

    /// The SubjectPublicKeyInfo, DER.
    pub(crate) fn spki_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap_or_default()
    }

    pub(crate) fn key(&self) -> Result<PublicKey, String> {
        PublicKey::from_spki_der(&self.spki_der())
    }

    /// The subject as attributes, in order: (`CN`, `acme`), ...
    pub(crate) fn subject_attributes(&self) -> Vec<(String, String)> {
        name_attributes(&self.cert.tbs_certificate.subject)
    }

    /// The subject as text: `C=US, O=acme, CN=signer`.
    pub(crate) fn subject(&self) -> String {
        self.subject_attributes()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The issuer's name, DER (to find issuers by name).
    pub(crate) fn issuer_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .issuer
            .to_der()
            .unwrap_or_default()
    }

    /// The subject's name, DER.
    pub(crate) fn subject_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .subject
            .to_der()
            .unwrap_or_default()
    }

    /// The value (the content of the `extnValue` OCTET STRING) of the
    /// extension `oid`.
    pub(crate) fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// The subject alternative names as text: URIs, e-mail addresses, DNS
    /// names, and UTF-8 other names (Fulcio's username SAN).
    pub(crate) fn sans(&self) -> Vec<String> {
        let Some(raw) = self.extension("2.5.29.17") else {
            return Vec::new();
        };
        let Ok(san) = SubjectAltName::from_der(raw) else {
            return Vec::new();
        };
        san.0
            .iter()
            .filter_map(|n| match n {
                GeneralName::UniformResourceIdentifier(s)
                | GeneralName::Rfc822Name(s)
                | GeneralName::DnsName(s) => Some(s.to_string()),
                GeneralName::OtherName(o) => o
                    .value
                    .decode_as::<Utf8StringRef<'_>>()
                    .ok()
                    .map(|s| s.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Whether `issuer`'s key signed this certificate.
    pub(crate) fn signed_by(&self, issuer: &Cert) -> bool {
        let Ok(tbs) = self.cert.tbs_certificate.to_der() else {
            return false;
        };
        let Ok(key) = issuer.key() else { return false };
        let alg = self.cert.signature_algorithm.oid.to_string();
        let signature = self.cert.signature.raw_bytes();
        let hash = match alg.as_str() {
            "1.2.840.10045.4.3.2" | "1.2.840.113549.1.1.11" => Hash::Sha256,
            "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Hash::Sha384,
            "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Hash::Sha512,
            "1.3.101.112" => Hash::Sha512,
            _ => return false,
        };
        key.verify(SigFormat::Der, hash, &tbs, signature).is_ok()
    }
}

fn name_attributes(name: &x509_cert::name::Name) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let key = match atv.oid.to_string().as_str() {
                "2.5.4.6" => "C".to_owned(),
                "2.5.4.8" => "ST".to_owned(),
                "2.5.4.7" => "L".to_owned(),
                "2.5.4.10" => "O".to_owned(),
                "2.5.4.11" => "OU".to_owned(),
                "2.5.4.3" => "CN".to_owned(),
                "2.5.4.5" => "SERIALNUMBER".to_owned(),
                "1.2.840.113549.1.9.1" => "E".to_owned(),
                other => other.to_owned(),
            };
            let v = &atv.value;
            let value = match v.tag() {
                Tag::Utf8String => v.decode_as::<Utf8StringRef<'_>>().map(|s| s.to_string()),
                Tag::PrintableString => v
                    .decode_as::<PrintableStringRef<'_>>()
                    .map(|s| s.to_string()),
                Tag::Ia5String => v.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string()),
                _ => Ok(String::from_utf8_lossy(v.value()).into_owned()),
            };
            if let Ok(value) = value {
                out.push((key, value));
            }
        }
    }
    out
}

/// A hash function a signature is made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// How an ECDSA signature is encoded: ASN.1 DER (X.509, cosign, Rekor) or
/// r||s (JWS, COSE). RSA signatures are the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigFormat {
    Der,
    Fixed,
}

/// A public key from a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// P-256, the uncompressed point.
    P256(Vec<u8>),
    /// P-384, the uncompressed point.
    P384(Vec<u8>),
    /// RSA, the `RSAPublicKey` DER, and its modulus size in bits.
    Rsa(Vec<u8>, usize),
    /// Ed25519.
    Ed25519(Vec<u8>),
}

impl PublicKey {
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a public key: {e}"))?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or("public key is not whole bytes")?
            .to_vec();
        match spki.algorithm.oid.to_string().as_str() {
            "1.2.840.10045.2.1" => {
                let curve = spki
                    .algorithm
                    .parameters
                    .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => Ok(PublicKey::P256(bits)),
                    "1.3.132.0.34" => Ok(PublicKey::P384(bits)),
                    c => Err(format!("unsupported elliptic curve {c}")),
                }
            }
            "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
                let n = rsa_modulus_bits(&bits).ok_or("RSA public key does not parse")?;
                Ok(PublicKey::Rsa(bits, n))
            }
            "1.3.101.112" => Ok(PublicKey::Ed25519(bits)),
            a => Err(format!("unsupported public key algorithm {a}")),
        }
    }

    /// Reads a PEM `PUBLIC KEY`.
    pub(crate) fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        PublicKey::from_spki_der(&der)
    }

    /// Verifies `signature` over `message` (hashed with `hash`); RSA keys
    /// take PSS signatures in the fixed format (JWS, COSE), PKCS#1 v1.5 in
    /// the DER one (X.509, cosign).
    pub(crate) fn verify(
        &self,
        format: SigFormat,
        hash: Hash,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), ()> {
        let algs: &[&dyn sig::VerificationAlgorithm] = match (self, format, hash) {
            (PublicKey::P256(_), SigFormat::Der, Hash::Sha256) => &[&sig::ECDSA_P256_SHA256_ASN1],
            (PublicKey::P256(_), SigFormat::Der, Hash::Sha384) => &[&sig::ECDSA_P256_SHA384_ASN1],
            (PublicKey::P256(_), SigFormat::Fixed, Hash::Sha256) => {
                &[&sig::ECDSA_P256_SHA256_FIXED]
            }
            (PublicKey::P384(_), SigFormat::Der, Hash::Sha384) => &[&sig::ECDSA_P384_SHA384_ASN1],
            (PublicKey::P384(_), SigFormat::Der, Hash::Sha256) => &[&sig::ECDSA_P384_SHA256_ASN1],
            (PublicKey::P384(_), SigFormat::Fixed, Hash::Sha384) => {
                &[&sig::ECDSA_P384_SHA384_FIXED]
            }
            // JWS and COSE (PS256...) use PSS; X.509 and cosign PKCS#1 v1.5.
            (PublicKey::Rsa(..), SigFormat::Fixed, Hash::Sha256) => {
                &[&sig::RSA_PSS_2048_8192_SHA256]
            }
            (PublicKey::Rsa(..), SigFormat::Fixed, Hash::Sha384) => {
                &[&sig::RSA_PSS_2048_8192_SHA384]
            }
            (PublicKey::Rsa(..), SigFormat::Fixed, Hash::Sha512) => {
                &[&sig::RSA_PSS_2048_8192_SHA512]
            }
            (PublicKey::Rsa(..), SigFormat::Der, Hash::Sha256) => {
                &[&sig::RSA_PKCS1_2048_8192_SHA256]
            }
            (PublicKey::Rsa(..), SigFormat::Der, Hash::Sha384) => {
                &[&sig::RSA_PKCS1_2048_8192_SHA384]
            }
            (PublicKey::Rsa(..), SigFormat::Der, Hash::Sha512) => {
                &[&sig::RSA_PKCS1_2048_8192_SHA512]
            }
            (PublicKey::Ed25519(_), _, _) => &[&sig::ED25519],
            _ => &[],
        };
        let raw = match self {
            PublicKey::P256(b) | PublicKey::P384(b) | PublicKey::Ed25519(b) => b,
            PublicKey::Rsa(b, _) => b,
        };
        algs.iter()
            .any(|a| {
                sig::UnparsedPublicKey::new(*a, raw)
                    .verify(message, signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or(())
    }

    /// The hash an ECDSA key signs with by default (cosign, Rekor).
    pub(crate) fn default_hash(&self) -> Hash {
        match self {
            PublicKey::P384(_) => Hash::Sha384,
            _ => Hash::Sha256,
        }
    }

    /// Verifies a DER ECDSA `signature` over a message of which only the
    /// SHA-256 (or SHA-384) `digest` is known (Sigstore bundles' message
    /// signatures).
    pub(crate) fn verify_prehash(&self, digest: &[u8], signature: &[u8]) -> Result<(), ()> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        match self {
            PublicKey::P256(point) => {
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| ())?;
                let s = p256::ecdsa::Signature::from_der(signature).map_err(|_| ())?;
                k.verify_prehash(digest, &s).map_err(|_| ())
            }
            PublicKey::P384(point) => {
                let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| ())?;
                let s = p384::ecdsa::Signature::from_der(signature).map_err(|_| ())?;
                k.verify_prehash(digest, &s).map_err(|_| ())
            }
            _ => Err(()),
        }
    }
}

/// The size of an `RSAPublicKey`'s modulus, in bits.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use x509_cert::der::{Reader as _, SliceReader, asn1::UintRef};
    let mut r = SliceReader::new(der).ok()?;
    let modulus = r
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _e = UintRef::decode(r)?;
            Ok(n.as_bytes().to_vec())
        })
        .ok()?;
    let lead = modulus
        .first()
        .map_or(0, |b| 8 - b.leading_zeros() as usize);
    Some(modulus.len().saturating_sub(1) * 8 + lead)
}

/// Seconds since the epoch as a time (negative clamps to the epoch).
pub(crate) fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn webpki_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Why a chain does not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// It leads to none of the roots.
    UnknownRoot,
    /// A certificate of it was not valid at the time.
    Expired,
    /// Something else (a usage, a constraint, an algorithm).
    Invalid(String),
}

/// Validates `leaf` up to one of `roots` through `intermediates` at time
/// `t`, for code signing (`eku_required`: the leaf must name it; else only
/// if it names any usage).
pub(crate) fn validate_chain(
    leaf: &Cert,
    intermediates: &[Cert],
    roots: &[Cert],
    t: SystemTime,
    eku_required: bool,
) -> Result<(), ChainError> {
    let leaf_der = CertificateDer::from(leaf.der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| ChainError::Invalid(format!("certificate: {e}")))?;
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|d| webpki::anchor_from_trusted_cert(d).ok())
        .collect();
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();
    let usage = if eku_required {
        webpki::KeyUsage::required(EKU_CODE_SIGNING)
    } else {
        webpki::KeyUsage::required_if_present(EKU_CODE_SIGNING)
    };
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        webpki_time(t),
        usage,
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(webpki::Error::UnknownIssuer) => Err(ChainError::UnknownRoot),
        Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }) => {
            Err(ChainError::Expired)
        }
        Err(e) => Err(ChainError::Invalid(format!("{e:?}"))),
    }
}

/// Standard base64, tolerant of missing padding.
pub(crate) fn b64(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim_end_matches('='))
        })
        .map_err(|e| format!("not base64: {e}"))
}

/// URL-safe base64 without padding (JWS).
pub(crate) fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))
}
