//! PEM files a configuration names: read and parsed, with errors that
//! give the key and the file (`key = "path": why`).

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// `key = "path": why`.
pub(crate) fn file_error(key: &str, path: &Path, why: impl std::fmt::Display) -> String {
    format!("{key} = {:?}: {why}", path.display().to_string())
}

/// The file's bytes.
pub(crate) fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| file_error(key, path, e))
}

/// The file's PEM text and the certificates in it (at least one).
pub(crate) fn certificates(
    key: &str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = read(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no certificate in it"));
    }
    Ok((pem, certs))
}
