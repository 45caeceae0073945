//! Test support (feature `testing`): Azurite, Microsoft's Azure Storage
//! emulator from npm, and moto's S3 server from PyPI, each started on a
//! free loopback port for the object storage backend's tests.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use cache_core::testing::free_port;

/// The emulator's well-known account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known account key (public, documented by Microsoft).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Azurite version `scripts/test.sh` installs (the newest that runs on
/// Node.js 20).
pub const AZURITE_VERSION: &str = "3.35.0";

/// Where to find `azurite-blob`: `$AZURITE_BLOB`, the repository's
/// `.tools/node_modules/.bin`, or `PATH`.
fn azurite_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("AZURITE_BLOB") {
        return Ok(PathBuf::from(p));
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/node_modules/.bin/azurite-blob");
    if local.is_file() {
        return Ok(local);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("azurite-blob"))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        format!(
            "azurite-blob not found: install it with `npm install --prefix .tools azurite@{AZURITE_VERSION}` \
             in the repository (scripts/test.sh does), or set AZURITE_BLOB"
        )
    })
}

/// Waits until `child` listens on 127.0.0.1:`port`: an error if it exits
/// first or does not within `within`.
fn wait_listening(
    child: &mut std::process::Child,
    port: u16,
    name: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited with {status} before listening"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} did not listen on 127.0.0.1:{port} within {} s",
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A running Azurite blob service on 127.0.0.1, stopped on drop.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts Azurite's blob service on a free port, in memory.
    pub fn start() -> Result<Azurite, String> {
        let bin = azurite_bin()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            // In memory; the directory only takes Azurite's debug and extent
            // bookkeeping files, so nothing lands in the working directory.
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut a = Azurite {
            child,
            port,
            _dir: dir,
        };
        wait_listening(&mut a.child, port, "azurite", Duration::from_secs(30))?;
        Ok(a)
    }

    /// The blob service endpoint, `http://127.0.0.1:<port>/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// `object_store` options for this emulator.
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("azure_storage_account_name".into(), ACCOUNT.into()),
            ("azure_storage_account_key".into(), ACCOUNT_KEY.into()),
            ("azure_storage_endpoint".into(), self.endpoint()),
            ("azure_allow_http".into(), "true".into()),
        ]
    }

    /// Creates a container (object_store cannot): a `PUT` signed with the
    /// emulator's shared key, retried for a few seconds while the emulator
    /// is still starting up (it accepts connections before it answers).
    pub fn create_container(&self, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_create_container(name) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn try_create_container(&self, name: &str) -> Result<(), String> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let version = "2021-08-06";
        // Path-style URLs put the account in the path, and the canonical
        // resource names it once more in front.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(ACCOUNT_KEY)
            .map_err(|e| e.to_string())?;
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            to_sign.as_bytes(),
        );
        let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let req = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            port = self.port
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp.lines().next().unwrap_or("");
        // 409: an earlier attempt created it and its answer was lost.
        if status.contains(" 201 ") || resp.contains("ContainerAlreadyExists") {
            Ok(())
        } else {
            Err(format!("creating container {name}: {resp}"))
        }
    }
}

/// The moto version `scripts/test.sh` installs.
pub const MOTO_VERSION: &str = "5.2.5";

/// Where to find `moto_server`: `$MOTO_SERVER`, the repository's
/// `.tools/moto/bin`, or `PATH`.
fn moto_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/moto/bin/moto_server");
    if local.is_file() {
        return Ok(local);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        format!(
            "moto_server not found: install it with `python3 -m venv .tools/moto && \
             .tools/moto/bin/pip install 'moto[server]=={MOTO_VERSION}'` in the repository \
             (scripts/test.sh does), or set MOTO_SERVER"
        )
    })
}

/// A running moto S3 server on 127.0.0.1, stopped on drop. It keeps
/// everything in memory and accepts any credentials.
#[derive(Debug)]
pub struct MotoS3 {
    child: Child,
    port: u16,
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MotoS3 {
    /// Starts moto's server on a free port.
    pub fn start() -> Result<MotoS3, String> {
        let bin = moto_bin()?;
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut m = MotoS3 { child, port };
        wait_listening(&mut m.child, port, "moto_server", Duration::from_secs(60))?;
        Ok(m)
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `object_store` options for this server (path-style requests).
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_access_key_id".into(), "moto".into()),
            ("aws_secret_access_key".into(), "moto".into()),
        ]
    }

    /// Creates a bucket (object_store cannot): one unsigned `PUT`, which
    /// moto accepts.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let req = format!(
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            port = self.port
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp.lines().next().unwrap_or("");
        if status.contains(" 200 ") {
            Ok(())
        } else {
            Err(format!("creating bucket {name}: {resp}"))
        }
    }
}

/// An [`ObjectStore`](object_store::ObjectStore) that records every
/// request made through it, as `"<op> <path>"` lines (`get` with a range
/// is `get_range`), for tests that count what a read costs.
#[derive(Debug)]
pub struct RecordingObjectStore {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    log: std::sync::Mutex<Vec<String>>,
}

impl RecordingObjectStore {
    /// Records the requests made to `inner`.
    pub fn new(inner: std::sync::Arc<dyn object_store::ObjectStore>) -> Self {
        RecordingObjectStore {
            inner,
            log: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The requests so far, oldest first, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, op: &str, path: impl std::fmt::Display) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{op} {path}"));
    }
}

impl std::fmt::Display for RecordingObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recording({})", self.inner)
    }
}

mod recording {
    use std::ops::Range;

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    use super::RecordingObjectStore;

    #[async_trait]
    impl ObjectStore for RecordingObjectStore {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.record("put", l);
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.record("put_multipart", l);
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            let op = match (o.head, &o.range) {
                (true, _) => "head",
                (false, Some(_)) => "get_range",
                (false, None) => "get",
            };
            self.record(op, l);
            self.inner.get_opts(l, o).await
        }
        async fn get_range(&self, l: &Path, r: Range<u64>) -> Result<Bytes> {
            self.record("get_range", l);
            self.inner.get_range(l, r).await
        }
        async fn head(&self, l: &Path) -> Result<ObjectMeta> {
            self.record("head", l);
            self.inner.head(l).await
        }
        async fn delete(&self, l: &Path) -> Result<()> {
            self.record("delete", l);
            self.inner.delete(l).await
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.record("list", prefix.map_or("", |p| p.as_ref()));
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.record("list", prefix.map_or("", |p| p.as_ref()));
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
            self.record("copy", to);
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
            self.record("copy", to);
            self.inner.copy_if_not_exists(from, to).await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_test_script_installs_the_moto_version_named_here() {
        let script = include_str!("../../scripts/test.sh");
        assert!(
            script.contains(&format!("MOTO_VERSION={}", super::MOTO_VERSION)),
            "scripts/test.sh and MOTO_VERSION disagree"
        );
    }

    #[test]
    fn the_test_script_installs_the_azurite_version_named_here() {
        let script = include_str!("../../scripts/test.sh");
        assert!(
            script.contains(&format!("AZURITE_VERSION={}", super::AZURITE_VERSION)),
            "scripts/test.sh and AZURITE_VERSION disagree"
        );
    }
}
