//! What the end-to-end tests share: `registry-proxy` started as a separate
//! process on a free loopback port with a configuration of the test's, and
//! small HTTP helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cache_upstream::testing::{RegistryProxy, TestRegistry, skopeo};

/// The binary under test: this build's, or `REGISTRY_PROXY_BIN` (to run
/// the suite against a release build, or an older one to see a test fail).
pub fn bin() -> String {
    std::env::var("REGISTRY_PROXY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_registry-proxy").to_owned())
}

/// A running `registry-proxy` (the test kit's [`RegistryProxy`]: its
/// `child`, `port` and `dir` read through); killed when dropped.
pub struct Proxy(RegistryProxy);

impl std::ops::Deref for Proxy {
    type Target = RegistryProxy;
    fn deref(&self) -> &RegistryProxy {
        &self.0
    }
}

impl std::ops::DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut RegistryProxy {
        &mut self.0
    }
}

/// Writes `dir/proxy.toml`: `body` listening on a free port, which it returns.
pub fn write_config(dir: &Path, body: &str) -> u16 {
    RegistryProxy::write_config(dir, body).unwrap()
}

/// Runs the binary with `args` (a subcommand, say) on `dir/proxy.toml`:
/// whether it succeeded, and what it printed.
pub fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    run_with_env(dir, args, &[])
}

/// [`run`] with these environment variables set too (as a pod's would be).
pub fn run_with_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(dir.join("proxy.toml"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// How long [`Proxy::logs`] waits for a line.
const LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Proxy {
    /// Starts a server on `body` in a directory of its own.
    pub fn start(body: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = write_config(dir.path(), body);
        Self::launch(dir, port)
    }

    /// Starts a server on the `proxy.toml` already in `dir`, listening on `port`.
    pub fn launch(dir: tempfile::TempDir, port: u16) -> Proxy {
        Proxy(
            RegistryProxy::launch(Path::new(&bin()), dir, port, "info", true)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Whether it logs a line that `line` accepts within ten seconds: the
    /// log is written by a background thread, so a line about a request
    /// may land after its response.
    pub async fn logs(&self, line: impl Fn(&str) -> bool) -> bool {
        let end = std::time::Instant::now() + LOG_WAIT;
        while !self.log().lines().any(&line) {
            if std::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }

    /// [`Proxy::logs`] for a synchronous test. The server is another
    /// process, so blocking this thread holds nothing of it up.
    pub fn logs_blocking(&self, line: impl Fn(&str) -> bool) -> bool {
        let end = std::time::Instant::now() + LOG_WAIT;
        while !self.log().lines().any(&line) {
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        true
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("cache-data")
    }

    /// The committed blob file of `digest` in the filesystem store.
    pub fn stored_blob(&self, digest: &cache_core::Digest) -> PathBuf {
        let hex = digest.hex();
        self.store()
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// The whole `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A counter or gauge from `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The proxy's peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// A configuration whose one rule, `lib`, maps `library/*` to the same
/// repositories of `host` at `url`; `extra` is appended verbatim.
pub fn config_for(host: &str, url: &str, extra: &str) -> String {
    format!(
        "[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{host}\"\nendpoint = \"{url}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{host}/library/*\"\ntarget = \"library/*\"\n{extra}"
    )
}

pub fn config(up: &TestRegistry, extra_rule: &str) -> String {
    config_for(&up.host(), &up.url(), extra_rule)
}

/// An image whose config lists `packages` (what `TestScanner` reads),
/// pushed to `up` as `repo:v1`; its layout's directory goes with it.
pub fn push_labeled(
    up: &TestRegistry,
    repo: &str,
    seed: u64,
    packages: &str,
) -> (cache_upstream::testing::TestImage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = cache_upstream::testing::write_labeled_image(
        dir.path(),
        "v1",
        seed,
        &[20_000],
        &[(cache_upstream::testing::PACKAGES_LABEL, packages)],
    );
    up.push(&img.layout, "v1", repo).unwrap();
    (img, dir)
}

pub fn pull(proxy: &Proxy, reference: &str, dest: &Path, all: bool) -> Result<(), String> {
    let mut args = vec![
        "copy".to_owned(),
        "--insecure-policy".to_owned(),
        "--src-tls-verify=false".to_owned(),
    ];
    if all {
        args.push("--all".to_owned());
    }
    args.push(format!("docker://{}/{reference}", proxy.host()));
    args.push(format!("dir:{}", dest.display()));
    skopeo(&args)
}

/// Asserts that no layer of `img` is served under `repo` (`BLOB_UNKNOWN`).
pub async fn assert_layers_refused(
    proxy: &Proxy,
    repo: &str,
    img: &cache_upstream::testing::TestImage,
    why: &str,
) {
    for (d, _) in &img.layers {
        let r = http()
            .get(proxy.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{repo} {d}: {why}");
    }
}

/// An ECDSA P-256 public key (PEM) made by openssl in `dir`, for a rule's
/// cosign signature policy that nothing a test pushes is signed with.
pub fn cosign_public_key(dir: &Path) -> PathBuf {
    let openssl =
        cache_upstream::testing::require("openssl", "openssl").unwrap_or_else(|e| panic!("{e}"));
    let (private, public) = (dir.join("cosign.key"), dir.join("cosign.pub"));
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(&openssl).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
    ]
    .map(std::ffi::OsStr::new)
    .into_iter()
    .chain([private.as_os_str()])
    .collect::<Vec<_>>());
    run(&["ec", "-pubout", "-in"]
        .map(std::ffi::OsStr::new)
        .into_iter()
        .chain([private.as_os_str(), "-out".as_ref(), public.as_os_str()])
        .collect::<Vec<_>>());
    public
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

pub async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or_default();
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// A certificate authority made for one test, and the certificates it issues.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// Where its files go.
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert,
            key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_to(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// Issues a certificate named `cn` for `names` (a server's, or with
    /// `client` a client's): its PEM and its key's PEM.
    pub fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        self.issue_for(
            cn,
            names,
            vec![if client { ClientAuth } else { ServerAuth }],
        )
    }

    /// A certificate named `cn` for `names` with the extended key usages
    /// `usages`: its PEM and its key's PEM.
    fn issue_for(
        &self,
        cn: &str,
        names: &[&str],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// As [`issue`](Self::issue), written to `dir/<stem>.pem` and
    /// `dir/<stem>-key.pem`.
    pub fn issue_files(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        client: bool,
    ) -> (PathBuf, PathBuf) {
        Self::write_pair(dir, stem, self.issue(stem, names, client))
    }

    /// A certificate for both ends of a connection (server and client
    /// authentication), as instances present to each other, written as
    /// [`issue_files`](Self::issue_files) writes.
    pub fn issue_peer_files(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        Self::write_pair(
            dir,
            stem,
            self.issue_for(stem, names, vec![ServerAuth, ClientAuth]),
        )
    }

    fn write_pair(dir: &Path, stem: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}
