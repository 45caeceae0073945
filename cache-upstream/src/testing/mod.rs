//! Test support with real parts: the CNCF distribution registry from
//! Debian's `docker-registry` package on 127.0.0.1, deterministic test
//! images written as OCI layouts, and `skopeo` to push them; and, for the
//! faults no real registry produces on demand, [`HostileRegistry`].
//!
//! Everything started here stops when its handle is dropped, also when a
//! test panics. A missing binary is an error that says how to install it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cache_core::{Digest, media_types};

mod hostile;
mod scanner;

pub use hostile::{HostileImage, HostileRegistry, SeenRequest, WireFault};
pub use scanner::{PACKAGES_LABEL, SeenScan, TestScanner, spec_schemas, spec_violations};

/// An axum app served on its own thread and runtime on a loopback address,
/// until dropped (what [`HostileRegistry`] and [`TestScanner`] run on).
#[derive(Debug)]
pub(crate) struct Served {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Serves the router `app` makes of the bound address on `ip` (a
    /// loopback address) and a free port.
    pub(crate) fn start(
        ip: &str,
        app: impl FnOnce(std::net::SocketAddr) -> axum::Router + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind a loopback address");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app(addr))
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Stalled bodies never end: do not wait for them.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Served {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Finds a binary or says which Debian package provides it.
pub fn require(bin: &str, package: &str) -> Result<PathBuf, String> {
    let candidates = [
        PathBuf::from("/usr/bin").join(bin),
        PathBuf::from("/usr/sbin").join(bin),
    ];
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(bin);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "`{bin}` not found: install it with `apt-get install {package}` (scripts/test.sh installs it)"
    ))
}

pub use cache_core::testing::free_port;

/// Waits (at most 15 s) until something answers HTTP on 127.0.0.1:`port`
/// (a `GET path` gets any answer); with `child`, an error as soon as that
/// process exits instead.
pub fn wait_http(port: u16, path: &str, mut child: Option<&mut Child>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(
                format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            );
            let mut buf = [0u8; 8];
            if s.read(&mut buf).is_ok_and(|n| n > 0) && buf.starts_with(b"HTTP/") {
                return Ok(());
            }
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            return Err(format!(
                "it exited ({status}) before answering on port {port}"
            ));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err(format!(
        "nothing answered HTTP on 127.0.0.1:{port} within 15 s"
    ))
}

/// A `registry-proxy` process (the binary at a path the caller gives:
/// tests pass `env!("CARGO_BIN_EXE_registry-proxy")`, benches a release
/// build) on a loopback port, in a directory of its own that holds its
/// `proxy.toml` and its log, `proxy.log`; killed when dropped. The one
/// launcher of the server for tests and benches.
#[derive(Debug)]
pub struct RegistryProxy {
    /// The process.
    pub child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Its directory: `proxy.toml`, `proxy.log`, and what the
    /// configuration puts there (a relative storage path lands here).
    pub dir: tempfile::TempDir,
}

impl RegistryProxy {
    /// Writes `dir/proxy.toml`: `body` with a `listen` line for a free
    /// port, which it returns.
    pub fn write_config(dir: &Path, body: &str) -> Result<u16, String> {
        let port = free_port();
        let cfg = format!("listen = \"127.0.0.1:{port}\"\n{body}");
        std::fs::write(dir.join("proxy.toml"), cfg).map_err(|e| e.to_string())?;
        Ok(port)
    }

    /// Starts `bin` on the configuration `body` (a `listen` line added) in
    /// a new directory, logging at `rust_log` (to `proxy.log` with
    /// `keep_log`, else nowhere: a long bench's log would weigh on it);
    /// returns once it answers.
    pub fn start(bin: &Path, body: &str, rust_log: &str, keep_log: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = Self::write_config(dir.path(), body)?;
        Self::launch(bin, dir, port, rust_log, keep_log)
    }

    /// Starts `bin` on the `proxy.toml` already in `dir`, which listens on
    /// `port`, logging at `rust_log` (to `dir/proxy.log` with `keep_log`);
    /// returns once it answers HTTP on `/v2/` (or, serving TLS, accepts
    /// connections). An error carries the log.
    pub fn launch(
        bin: &Path,
        dir: tempfile::TempDir,
        port: u16,
        rust_log: &str,
        keep_log: bool,
    ) -> Result<Self, String> {
        let config = dir.path().join("proxy.toml");
        let tls = std::fs::read_to_string(&config)
            .unwrap_or_default()
            .contains("[tls]");
        let (out, err) = if keep_log {
            let log =
                std::fs::File::create(dir.path().join("proxy.log")).map_err(|e| e.to_string())?;
            (
                Stdio::from(log.try_clone().map_err(|e| e.to_string())?),
                Stdio::from(log),
            )
        } else {
            (Stdio::null(), Stdio::null())
        };
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut p = RegistryProxy { child, port, dir };
        let ready = if tls {
            // Listening is enough: HTTPS is the caller's to check.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break Ok(());
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    break Err(format!("it exited ({status}) before listening"));
                }
                if Instant::now() > deadline {
                    break Err(format!("it did not listen on port {port} within 15 s"));
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        } else {
            wait_http(port, "/v2/", Some(&mut p.child))
        };
        match ready {
            Ok(()) => Ok(p),
            Err(e) => Err(format!(
                "registry-proxy did not start: {e}; log:\n{}",
                p.log()
            )),
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running distribution registry on 127.0.0.1.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    auth: Option<(String, String)>,
    tls: bool,
    push_cert_dir: Option<std::path::PathBuf>,
}

/// PEM files for a registry serving HTTPS: its certificate and key, and
/// optionally CAs whose client certificates it requires.
#[derive(Debug, Clone)]
pub struct RegistryTls {
    /// The certificate chain (PEM file).
    pub certificate: std::path::PathBuf,
    /// Its key (PEM file).
    pub key: std::path::PathBuf,
    /// Client CA certificates (PEM files); clients must present one's.
    pub client_cas: Vec<std::path::PathBuf>,
    /// A directory with a client certificate (`*.cert`, `*.key`) skopeo
    /// pushes with, for a registry that requires one.
    pub push_cert_dir: Option<std::path::PathBuf>,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<Self, String> {
        Self::start_inner(None, None, None)
    }

    /// Starts an anonymous registry serving HTTPS (`http.tls`).
    pub fn start_tls(tls: RegistryTls) -> Result<Self, String> {
        Self::start_inner(None, None, Some(tls))
    }

    /// Starts a registry that requires htpasswd (bcrypt) basic auth.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self, String> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())), None, None)
    }

    /// Starts the distribution registry in proxy mode (`proxy: remoteurl:`),
    /// a pull-through cache of `remote`, with empty storage.
    pub fn start_proxy(remote: &str) -> Result<Self, String> {
        Self::start_inner(None, Some(remote.to_owned()), None)
    }

    fn start_inner(
        auth: Option<(String, String)>,
        proxy: Option<String>,
        tls: Option<RegistryTls>,
    ) -> Result<Self, String> {
        let bin = require("docker-registry", "docker-registry")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let mut auth_yaml = String::new();
        if let Some((u, p)) = &auth {
            let htpasswd = require("htpasswd", "apache2-utils")?;
            let out = Command::new(htpasswd)
                .args(["-Bbn", u, p])
                .output()
                .map_err(|e| format!("htpasswd: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).map_err(|e| e.to_string())?;
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let proxy_yaml = proxy
            .map(|r| format!("proxy:\n  remoteurl: {r}\n"))
            .unwrap_or_default();
        let tls_yaml = tls
            .as_ref()
            .map(|t| {
                let mut y = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    t.certificate.display(),
                    t.key.display()
                );
                if !t.client_cas.is_empty() {
                    y.push_str("    clientcas:\n");
                    for ca in &t.client_cas {
                        y.push_str(&format!("      - {}\n", ca.display()));
                    }
                }
                y
            })
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-only-secret\n{tls_yaml}{auth_yaml}{proxy_yaml}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting docker-registry: {e}"))?;
        let mut reg = TestRegistry {
            child,
            port,
            dir,
            auth,
            push_cert_dir: tls.as_ref().and_then(|t| t.push_cert_dir.clone()),
            tls: tls.is_some(),
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        wait_http(self.port, "/v2/", Some(&mut self.child))
            .map_err(|e| format!("docker-registry: {e}; log:\n{}", self.log()))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines of requests with `method` whose path contains `part`.
    pub fn requests(&self, method: &str, part: &str) -> usize {
        let prefix = format!("\"{method} /v2/");
        self.log()
            .lines()
            .filter(|l| l.contains(&prefix) && l.contains(part))
            .count()
    }

    /// Blob GETs seen in the access log.
    pub fn blob_gets(&self) -> usize {
        self.requests("GET", "/blobs/")
    }

    /// Pushes an OCI layout's `tag` (every platform of an index) to `repo:tag` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<(), String> {
        let mut args = vec![
            "copy".to_owned(),
            "--insecure-policy".to_owned(),
            "--all".to_owned(),
            // Byte-identical images: no recompression, no manifest rewrite.
            "--preserve-digests".to_owned(),
            "--dest-tls-verify=false".to_owned(),
        ];
        if let Some((u, p)) = &self.auth {
            args.push(format!("--dest-creds={u}:{p}"));
        }
        if let Some(d) = &self.push_cert_dir {
            args.push(format!("--dest-cert-dir={}", d.display()));
        }
        args.push(format!("oci:{}:{tag}", layout.display()));
        args.push(format!("docker://{}/{repo}:{tag}", self.host()));
        skopeo(&args)
    }

    /// Deletes `repo@reference` (a tag, or a manifest's digest) with the
    /// registry's delete API (`skopeo delete`; deletes are enabled in the
    /// configuration the registry is started with, `storage.delete`).
    /// The distribution registry deletes the manifest a tag names, and
    /// with it every tag naming it: they answer `404 MANIFEST_UNKNOWN`.
    pub fn delete(&self, repo: &str, reference: &str) -> Result<(), String> {
        let sep = if reference.contains(':') { '@' } else { ':' };
        let mut args = vec!["delete".to_owned(), "--tls-verify=false".to_owned()];
        if let Some((u, p)) = &self.auth {
            args.push(format!("--creds={u}:{p}"));
        }
        if let Some(d) = &self.push_cert_dir {
            args.push(format!("--cert-dir={}", d.display()));
        }
        args.push(format!("docker://{}/{repo}{sep}{reference}", self.host()));
        skopeo(&args)
    }

    /// Stops the registry (also done on drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs skopeo with `args`; an error carries its stderr.
pub fn skopeo(args: &[String]) -> Result<(), String> {
    let bin = require("skopeo", "skopeo")?;
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("skopeo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Deterministic bytes: the same `seed` and `len` give the same content.
pub fn deterministic(seed: u64, len: usize) -> Vec<u8> {
    cache_core::testing::content(seed, len).to_vec()
}

/// A tar archive holding one file of `size` deterministic bytes, with fixed
/// metadata so that the same seed always gives the same layer digest.
pub fn tar_layer(seed: u64, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    let data = deterministic(seed, size);
    b.append_data(&mut h, format!("data-{seed}.bin"), data.as_slice())
        .expect("writing to a Vec");
    b.into_inner().expect("writing to a Vec")
}

/// What [`write_image`] and [`write_index`] wrote.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// The tag it is annotated with.
    pub tag: String,
    /// The top manifest (or index) digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Every layer's digest and size (of every platform, for an index).
    pub layers: Vec<(Digest, u64)>,
    /// Platform manifests of an index, with their platform (`os/arch`).
    pub platforms: Vec<(Digest, String)>,
}

struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("blobs/sha256")).expect("layout dir");
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        Layout {
            root: root.to_owned(),
        }
    }

    fn blob(&self, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        std::fs::write(self.root.join("blobs/sha256").join(d.hex()), data).expect("blob");
        d
    }

    fn index(&self, entries: &[(Digest, usize, &str, &str)]) {
        let m: Vec<String> = entries
            .iter()
            .map(|(d, size, mt, tag)| {
                format!(
                    r#"{{"mediaType":"{mt}","digest":"{d}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#
                )
            })
            .collect();
        std::fs::write(
            self.root.join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, m.join(",")),
        )
        .expect("index.json");
    }
}

fn image_manifest(
    l: &Layout,
    seed: u64,
    layer_sizes: &[usize],
    arch: &str,
    labels: &[(&str, &str)],
) -> (Digest, usize, Vec<(Digest, u64)>) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let tar = tar_layer(seed * 1000 + i as u64, *size);
        let d = l.blob(&tar);
        diff_ids.push(format!("\"{d}\""));
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
            tar.len()
        ));
        layers.push((d, tar.len() as u64));
    }
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let image_config = if labels.is_empty() {
        "{}".to_owned()
    } else {
        serde_json::json!({ "Labels": labels }).to_string()
    };
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{image_config},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let cd = l.blob(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
        media_types::OCI_MANIFEST,
        config.len(),
        descs.join(",")
    );
    (l.blob(manifest.as_bytes()), manifest.len(), layers)
}

/// Writes a single-platform image with layers of the given sizes, tagged `tag`.
pub fn write_image(dir: &Path, tag: &str, seed: u64, layer_sizes: &[usize]) -> TestImage {
    write_labeled_image(dir, tag, seed, layer_sizes, &[])
}

/// [`write_image`] with these labels in the image config.
pub fn write_labeled_image(
    dir: &Path,
    tag: &str,
    seed: u64,
    layer_sizes: &[usize],
    labels: &[(&str, &str)],
) -> TestImage {
    let l = Layout::new(dir);
    let (d, size, layers) = image_manifest(&l, seed, layer_sizes, "amd64", labels);
    l.index(&[(d.clone(), size, media_types::OCI_MANIFEST, tag)]);
    TestImage {
        layout: dir.to_owned(),
        tag: tag.to_owned(),
        digest: d,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        layers,
        platforms: Vec::new(),
    }
}

/// One layer of [`write_artifact`]: media type, content, annotations
/// (a JSON object's text, `{}` for none).
pub type ArtifactLayer<'a> = (&'a str, &'a [u8], &'a str);

/// Writes an image manifest of `layers` with an empty JSON config (as
/// cosign's signature manifests are), optionally with `artifactType` and a
/// `subject` (digest, size, media type), tagged `tag`.
pub fn write_artifact(
    dir: &Path,
    tag: &str,
    layers: &[ArtifactLayer<'_>],
    artifact_type: Option<&str>,
    subject: Option<(&Digest, usize, &str)>,
) -> TestImage {
    let l = Layout::new(dir);
    let config = b"{}";
    let cd = l.blob(config);
    let mut descs = Vec::new();
    let mut out = Vec::new();
    for (mt, data, annotations) in layers {
        let d = l.blob(data);
        descs.push(format!(
            r#"{{"mediaType":"{mt}","digest":"{d}","size":{},"annotations":{annotations}}}"#,
            data.len()
        ));
        out.push((d, data.len() as u64));
    }
    let mut extra = String::new();
    if let Some(t) = artifact_type {
        extra.push_str(&format!(r#","artifactType":"{t}""#));
    }
    if let Some((d, size, mt)) = subject {
        extra.push_str(&format!(
            r#","subject":{{"mediaType":"{mt}","digest":"{d}","size":{size}}}"#
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]{extra}}}"#,
        media_types::OCI_MANIFEST,
        config.len(),
        descs.join(",")
    );
    let d = l.blob(manifest.as_bytes());
    l.index(&[(d.clone(), manifest.len(), media_types::OCI_MANIFEST, tag)]);
    TestImage {
        layout: dir.to_owned(),
        tag: tag.to_owned(),
        digest: d,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        layers: out,
        platforms: Vec::new(),
    }
}

/// Writes a two-platform index (linux/amd64, linux/arm64), tagged `tag`.
pub fn write_index(dir: &Path, tag: &str, seed: u64, layer_size: usize) -> TestImage {
    write_labeled_index(dir, tag, seed, layer_size, [&[], &[]])
}

/// [`write_index`] with these labels in the amd64 and the arm64 config.
pub fn write_labeled_index(
    dir: &Path,
    tag: &str,
    seed: u64,
    layer_size: usize,
    labels: [&[(&str, &str)]; 2],
) -> TestImage {
    let l = Layout::new(dir);
    let mut platforms = Vec::new();
    let mut layers = Vec::new();
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let (d, size, ls) =
            image_manifest(&l, seed * 10 + i as u64, &[layer_size], arch, labels[i]);
        entries.push(format!(
            r#"{{"mediaType":"{}","digest":"{d}","size":{size},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
            media_types::OCI_MANIFEST
        ));
        platforms.push((d, format!("linux/{arch}")));
        layers.extend(ls);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        media_types::OCI_INDEX,
        entries.join(",")
    );
    let d = l.blob(index.as_bytes());
    l.index(&[(d.clone(), index.len(), media_types::OCI_INDEX, tag)]);
    TestImage {
        layout: dir.to_owned(),
        tag: tag.to_owned(),
        digest: d,
        media_type: media_types::OCI_INDEX.to_owned(),
        layers,
        platforms,
    }
}
