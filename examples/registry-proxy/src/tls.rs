//! Serving HTTPS: the certificate and key from PEM files (rustls, HTTP/2
//! through ALPN), optionally requiring client certificates from a CA
//! (mutual TLS), and re-read when the files change or on SIGHUP, without
//! dropping connections: new handshakes get the new certificate and are
//! checked against the new client CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use cache_upstream::stamp::FileStamp;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// `[tls]`: where the PEM files are (checked by [`TlsFiles::check`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to; with it, a
    /// client without a valid certificate is refused in the handshake.
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in a PEM file; an error names the file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file; an error names the file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

impl TlsFiles {
    /// Reads and checks the certificate and key: they parse and the key
    /// is the certificate's.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let certs = read_certificates(&self.certificate)?;
        let key = read_key(&self.key)?;
        let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
            format!(
                "{} and {}: {e}",
                self.certificate.display(),
                self.key.display()
            )
        })?;
        Ok(Arc::new(ck))
    }

    /// The peer endpoint's files: its certificate, and the peer CA that
    /// every connecting instance's certificate must chain to.
    pub fn for_peers(tls: &cache_core::peer::PeerTls) -> Self {
        TlsFiles {
            certificate: tls.certificate.clone(),
            key: tls.key.clone(),
            client_ca: Some(tls.ca.clone()),
        }
    }

    /// Makes relative paths relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        let files = [&mut self.certificate, &mut self.key];
        for p in files.into_iter().chain(&mut self.client_ca) {
            cache_core::config::rebase(p, base);
        }
    }

    /// Checks every file: what `registry-proxy check` and loading the
    /// configuration run.
    pub fn check(&self) -> Result<(), String> {
        self.load()?;
        if let Some(ca) = &self.client_ca {
            client_verifier(ca)?;
        }
        Ok(())
    }

    fn stamp(&self) -> Vec<Option<FileStamp>> {
        [&self.certificate, &self.key]
            .into_iter()
            .chain(&self.client_ca)
            .map(|p| FileStamp::of(p))
            .collect()
    }
}

fn client_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certificates(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// webpki's verifier for client certificates that chain to the CAs in `path`.
fn client_verifier(path: &Path) -> Result<Verifier, String> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots(path)?), provider())
        .build()
        .map(Verifier)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct Verifier(Arc<dyn ClientCertVerifier>);

/// Client certificates checked with webpki against the client CA file as
/// last read ([`Certificates::reload`] reads it again). Handshakes name no
/// acceptable CAs (`certificate_authorities`), since the list would go
/// stale when the file changes; a client then sends the certificate it has.
#[derive(Debug)]
struct ClientCa {
    current: ArcSwap<Verifier>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .0
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificate being served and the client CA, replaced when the
/// files change.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    client_ca: Option<Arc<ClientCa>>,
    stamp: Mutex<Vec<Option<FileStamp>>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads the files.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, String> {
        let stamp = files.stamp();
        let current = files.load()?;
        let client_ca = match &files.client_ca {
            Some(ca) => Some(Arc::new(ClientCa {
                current: ArcSwap::from_pointee(client_verifier(ca)?),
                algorithms: provider().signature_verification_algorithms,
            })),
            None => None,
        };
        Ok(Arc::new(Certificates {
            files,
            current: ArcSwap::new(current),
            client_ca,
            stamp: Mutex::new(stamp),
        }))
    }

    /// Re-reads the certificate and key, and the client CA. A pair (or a
    /// CA file) that does not load is reported and the one in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamp = self.files.stamp();
        let loaded = self.files.load();
        let ca = match (&self.client_ca, &self.files.client_ca) {
            (Some(now), Some(path)) => Some((now, path, client_verifier(path))),
            _ => None,
        };
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        let ca = match ca {
            None => Ok(()),
            Some((now, path, Ok(verifier))) => {
                now.current.store(Arc::new(verifier));
                tracing::info!(client_ca = %path.display(), "TLS client CA loaded");
                Ok(())
            }
            Some((_, _, Err(e))) => {
                tracing::warn!(error = %e, "TLS client CA not reloaded; the previous one stays");
                Err(e)
            }
        };
        match loaded {
            Ok(ck) => {
                self.current.store(ck);
                tracing::info!(certificate = %self.files.certificate.display(), "TLS certificate loaded");
                ca
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                Err(e)
            }
        }
    }

    /// Re-reads the files whenever they change (checked every `every`).
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = this.upgrade() else { return };
                let now = this.files.stamp();
                let changed = *this.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now;
                if changed {
                    let _ = this.reload();
                }
            }
        });
    }

    /// Loads `files` and makes the acceptor that serves them; the files
    /// are re-read whenever they change (checked every 2 s), so new
    /// handshakes get a rotated certificate and a changed client CA.
    pub fn serve(files: TlsFiles) -> Result<(Arc<Self>, tokio_rustls::TlsAcceptor), String> {
        let certificates = Self::new(files)?;
        let config = certificates.server_config()?;
        certificates.watch(Duration::from_secs(2));
        Ok((certificates, tokio_rustls::TlsAcceptor::from(config)))
    }

    /// The rustls configuration: HTTP/2 and HTTP/1.1 by ALPN, client
    /// certificates required when a client CA is configured.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            Some(ca) => builder.with_client_cert_verifier(ca.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.client_ca.is_some() {
            // A resumed handshake checks no certificate: a client would
            // keep the trust of the CA it first came under after the file
            // changed. Every new connection is a full handshake instead.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(Arc::new(config))
    }
}
