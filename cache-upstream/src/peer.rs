//! The HTTP client of peer streaming: reads a blob from the instance that
//! holds its fetch lease (`cache_core::peer`), at the address the lease
//! names, from its peer endpoint (`cache_core::server::PeerService`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::peer::{PeerConfig, PeerSource, PeerTls};
use cache_core::{Digest, Error, Result, Secret, UpstreamBlob};
use futures::StreamExt;
use reqwest::{StatusCode, header};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

/// A [`PeerSource`] over HTTP: `GET http://<peer>/peer/v1/blobs/<digest>`
/// with `Range: bytes=N-` and the shared secret as a bearer token. No
/// redirects, no proxy, no retries (the engine resumes), a connect and
/// answer timeout, idle connections kept per peer (at most 8). With
/// [`PeerTls`], HTTPS with mutual TLS instead (see [`peer_client_tls`]).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Secret,
    scheme: &'static str,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("secret", &self.secret)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client presenting `secret`, giving up on a peer that does not
    /// connect or answer within `timeout`, over plain HTTP.
    pub fn new(secret: Secret, timeout: Duration) -> Result<Self> {
        Self::build(secret, timeout, None)
    }

    /// The same over HTTPS with `tls` (from [`peer_client_tls`]).
    pub fn with_tls(secret: Secret, timeout: Duration, tls: rustls::ClientConfig) -> Result<Self> {
        Self::build(secret, timeout, Some(tls))
    }

    fn build(secret: Secret, timeout: Duration, tls: Option<rustls::ClientConfig>) -> Result<Self> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .pool_max_idle_per_host(8)
            .tcp_nodelay(true);
        let scheme = match tls {
            Some(tls) => {
                http = http.use_preconfigured_tls(tls).https_only(true);
                "https"
            }
            None => "http",
        };
        let http = http
            .build()
            .map_err(|e| Error::misconfigured(format!("peer client: {e}")))?;
        Ok(PeerClient {
            http,
            secret,
            scheme,
        })
    }

    /// The client for `config`: its secret and timeout, and its TLS files
    /// read now if it has them (an error names the file).
    pub fn from_config(config: &PeerConfig) -> Result<Self> {
        match &config.tls {
            None => Self::new(config.secret.clone(), config.timeout),
            Some(tls) => {
                Self::with_tls(config.secret.clone(), config.timeout, peer_client_tls(tls)?)
            }
        }
    }
}

/// The client side of mutual TLS between peers: trusts only the
/// certificates that chain to `tls.ca`, checks a peer's certificate
/// against `tls.server_name` whatever address the peer was reached at,
/// and presents `tls.certificate`. The files are read now; an error names
/// the file and the key it came from. They are read again when they
/// change (checked at each new connection's handshake), so a rotated
/// certificate is presented, and a changed CA trusted, without a restart;
/// sessions are not resumed, so every new connection is checked against
/// the CA as it is then. Connections already open carry on.
pub fn peer_client_tls(tls: &PeerTls) -> Result<rustls::ClientConfig> {
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| {
        Error::misconfigured(format!(
            "storage.peer_server_name = {:?}: {e}",
            tls.server_name
        ))
    })?;
    let verifier = NamedPeer {
        roots: Reread::new(tls.clone(), vec![tls.ca.clone()], "peer CA", peer_roots)?,
        name,
        algorithms: provider().signature_verification_algorithms,
    };
    let presented = Presented(Reread::new(
        tls.clone(),
        vec![tls.certificate.clone(), tls.key.clone()],
        "peer certificate",
        presented,
    )?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::misconfigured(format!("peer TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(presented));
    // A resumed handshake checks no certificate: a peer would keep the
    // trust of the CA it was first checked against after the file changed.
    // Connections are kept and reused, so full handshakes are few.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A configuration error about `path`, given as `storage.<key>`.
fn bad(key: &str, path: &Path, why: impl std::fmt::Display) -> Error {
    Error::misconfigured(crate::pem::file_error(&format!("storage.{key}"), path, why))
}

/// The certificates in the PEM file `path` (at least one).
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    crate::pem::certificates(&format!("storage.{key}"), path)
        .map(|(_, certs)| certs)
        .map_err(Error::misconfigured)
}

/// webpki's verifier for certificates that chain to the peer CA.
fn peer_roots(tls: &PeerTls) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates("peer_ca", &tls.ca)? {
        roots.add(c).map_err(|e| bad("peer_ca", &tls.ca, e))?;
    }
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| bad("peer_ca", &tls.ca, e))
}

/// The certificate chain and key this instance presents, checked to be a pair.
fn presented(tls: &PeerTls) -> Result<Arc<CertifiedKey>> {
    let chain = certificates("peer_certificate", &tls.certificate)?;
    let pem = crate::pem::read("storage.peer_key", &tls.key).map_err(Error::misconfigured)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad("peer_key", &tls.key, format!("no usable private key: {e}")))?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        bad(
            "peer_certificate",
            &tls.certificate,
            format!("with {}: {e}", tls.key.display()),
        )
    })?;
    Ok(Arc::new(ck))
}

/// The versions of files ([`FileStamp`](crate::stamp::FileStamp); `None` for a file not there).
type Stamp = Vec<Option<crate::stamp::FileStamp>>;

fn stamp(paths: &[std::path::PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| crate::stamp::FileStamp::of(p))
        .collect()
}

/// What `load` made of `paths` when they were last read, read again by
/// [`Reread::get`] when their stamp has changed since. A read that fails
/// then is reported and the previous value stays.
struct Reread<T> {
    tls: PeerTls,
    paths: Vec<std::path::PathBuf>,
    what: &'static str,
    load: fn(&PeerTls) -> Result<T>,
    current: std::sync::Mutex<(Stamp, T)>,
}

impl<T> std::fmt::Debug for Reread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reread")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Reread<T> {
    /// Reads the files now: an error here is the configuration's.
    fn new(
        tls: PeerTls,
        paths: Vec<std::path::PathBuf>,
        what: &'static str,
        load: fn(&PeerTls) -> Result<T>,
    ) -> Result<Self> {
        let current = std::sync::Mutex::new((stamp(&paths), load(&tls)?));
        Ok(Reread {
            tls,
            paths,
            what,
            load,
            current,
        })
    }

    /// The value, read again first if the files changed.
    fn get(&self) -> T {
        let now = stamp(&self.paths);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != now {
            current.0 = now;
            match (self.load)(&self.tls) {
                Ok(v) => {
                    current.1 = v;
                    tracing::info!(file = %self.paths[0].display(), "{} loaded", self.what);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{} not reloaded; the previous one stays", self.what);
                }
            }
        }
        current.1.clone()
    }
}

/// The certificate this instance presents to its peers.
#[derive(Debug)]
struct Presented(Reread<Arc<CertifiedKey>>);

impl ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a peer's certificate chain with webpki against the peer CA and
/// for the configured name, in place of the name of the address the peer
/// was reached at (which its certificate cannot know: pod IPs change).
/// Everything else, signatures included, is webpki's.
#[derive(Debug)]
struct NamedPeer {
    roots: Reread<Arc<rustls::client::WebPkiServerVerifier>>,
    name: ServerName<'static>,
    /// The signature algorithms webpki's verifier uses too.
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NamedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _reached_at: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.roots.get().verify_server_cert(
            end_entity,
            intermediates,
            &self.name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[async_trait]
impl PeerSource for PeerClient {
    async fn blob(&self, peer: &str, digest: &Digest, from: u64) -> Result<UpstreamBlob> {
        PeerConfig::check_advertise(peer)
            .map_err(|e| Error::upstream(peer, format!("peer address {e}"), false))?;
        let url = format!(
            "{}://{peer}{}{digest}",
            self.scheme,
            cache_core::peer::PEER_PATH
        );
        let fail = |m: String| Error::upstream(peer, format!("peer: {m}"), true);
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.secret.expose())
            .header(header::RANGE, format!("bytes={from}-"))
            .send()
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        let (size, span) = match resp.status() {
            StatusCode::OK => {
                let size = resp
                    .content_length()
                    .ok_or_else(|| fail("200 without a length".into()))?;
                (size, 0..size)
            }
            StatusCode::PARTIAL_CONTENT => {
                let v = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let (a, b, total) = crate::client::content_range(v)
                    .filter(|(a, b, t)| a <= b && b < t)
                    .ok_or_else(|| fail(format!("206 with Content-Range {v:?}")))?;
                (total, a..b + 1)
            }
            StatusCode::UNAUTHORIZED => {
                return Err(fail("401: it does not know our peer_secret".into()));
            }
            s => return Err(fail(format!("answered {s} for {digest}"))),
        };
        let peer = peer.to_owned();
        let stream = resp
            .bytes_stream()
            .map(move |c| {
                c.map_err(|e| Error::upstream_with(&peer, "peer stream interrupted", true, e))
            })
            .boxed();
        Ok(UpstreamBlob {
            size,
            range: span,
            stream,
        })
    }
}
