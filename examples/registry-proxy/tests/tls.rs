//! TLS on both sides, with certificates each test makes (rcgen): skopeo
//! pulls over HTTPS verifying the proxy against its CA, a wrong CA fails,
//! HTTP/2 by ALPN, a rotated certificate is served after SIGHUP (and after
//! the files change) without dropping connections, client certificates
//! (mutual TLS) from a client CA that may change; upstream, the Debian distribution registry serving HTTPS
//! behind a private CA through `ca_file`, and requiring a client
//! certificate through `client_certificate`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_upstream::testing::{RegistryTls, TestRegistry, skopeo, write_image};
use common::{Proxy, TestCa, config};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_table(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "\n[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    )
}

/// skopeo pulls `reference` from `host` over HTTPS, trusting the CA
/// certificates in `cert_dir` (its `*.crt` files), into a new directory.
fn pull_https(host: &str, reference: &str, cert_dir: &Path) -> Result<tempfile::TempDir, String> {
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy".into(),
        "--insecure-policy".into(),
        format!("--src-cert-dir={}", cert_dir.display()),
        format!("docker://{host}/{reference}"),
        format!("dir:{}", out.path().display()),
    ])?;
    Ok(out)
}

fn upstream_with_image() -> (
    TestRegistry,
    cache_upstream::testing::TestImage,
    tempfile::TempDir,
) {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 61, &[40_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    (up, img, src)
}

fn rustls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS handshake with `config` with the server on 127.0.0.1:`port`.
async fn handshake(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A TLS connection to the proxy, verified against `ca_pem`.
async fn connect(
    port: u16,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    handshake(port, rustls_client(ca_pem, None)).await.unwrap()
}

/// The leaf certificate the proxy presents to a new connection, as PEM
/// would decode it (DER).
async fn presented(port: u16, ca_pem: &str) -> Vec<u8> {
    let s = connect(port, ca_pem).await;
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// One HTTP/1.1 request on an open TLS connection: the status line.
async fn get_on(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Replaces a file atomically (a watcher never reads half of it).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_over_https_verifying_the_proxy_and_a_wrong_ca_fails() {
    let (up, img, _src) = upstream_with_image();
    let ca = TestCa::new("proxy CA");
    let (cert, key) = ca.issue_files(ca.dir.path(), "server", &["127.0.0.1", "localhost"], false);
    let proxy = Proxy::start(&config(&up, &tls_table(&cert, &key, "")));

    let trust = tempfile::tempdir().unwrap();
    ca.write_to(trust.path(), "ca.crt");
    let out = pull_https(&proxy.host(), "library/demo:v1", trust.path())
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }

    let other = TestCa::new("another CA");
    let wrong = tempfile::tempdir().unwrap();
    other.write_to(wrong.path(), "ca.crt");
    let e = pull_https(&proxy.host(), "library/demo:v1", wrong.path())
        .expect_err("a certificate from a CA the client does not trust");
    assert!(e.contains("certificate"), "{e}");

    // HTTP/2 by ALPN for a client that offers it.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{}/v2/", proxy.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // Plain HTTP to the HTTPS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/v2/", proxy.port))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_after_sighup_and_open_connections_stay() {
    let (up, _img, _src) = upstream_with_image();
    let ca = TestCa::new("rotation CA");
    let (cert, key) = ca.issue_files(ca.dir.path(), "server", &["127.0.0.1"], false);
    let first = std::fs::read_to_string(&cert).unwrap();
    let proxy = Proxy::start(&config(&up, &tls_table(&cert, &key, "")));
    assert_eq!(presented(proxy.port, &ca.pem()).await, der(&first));
    let mut kept = connect(proxy.port, &ca.pem()).await;
    assert!(get_on(&mut kept, "/v2/").await.contains("200"));

    // Rotated files, then SIGHUP.
    let (second, second_key) = ca.issue("server-two", &["127.0.0.1"], false);
    replace(&key, &second_key);
    replace(&cert, &second);
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(proxy.port, &ca.pem()).await != der(&second) {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        get_on(&mut kept, "/v2/").await.contains("200"),
        "a connection opened before the rotation still serves"
    );

    // Files that change are picked up without a signal too.
    let (third, third_key) = ca.issue("server-three", &["127.0.0.1"], false);
    replace(&key, &third_key);
    replace(&cert, &third);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(proxy.port, &ca.pem()).await != der(&third) {
        assert!(
            Instant::now() < deadline,
            "the changed files are not served:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A certificate file that does not load: the reload is refused and
    // says which file; the certificate in use stays.
    replace(&cert, "not a certificate\n");
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };
    assert!(
        proxy
            .logs(|log| log.contains("configuration not reloaded")
                && log.contains(&format!("{}: no certificate in it", cert.display())))
            .await,
        "{}",
        proxy.log()
    );
    assert_eq!(presented(proxy.port, &ca.pem()).await, der(&third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let (up, _img, _src) = upstream_with_image();
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let strangers = TestCa::new("stranger CA");
    let (cert, key) = ca.issue_files(ca.dir.path(), "server", &["127.0.0.1"], false);
    let client_ca = clients.write_to(clients.dir.path(), "clients.pem");
    let proxy = Proxy::start(&config(
        &up,
        &tls_table(
            &cert,
            &key,
            &format!("client_ca = \"{}\"\n", client_ca.display()),
        ),
    ));
    // A client's configuration, kept across connections as a real
    // client's is: it resumes sessions where the server lets it.
    let client = |identity: Option<(String, String)>| {
        rustls_client(
            &ca.pem(),
            identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
    };
    let attempt = |config: Arc<rustls::ClientConfig>| {
        let port = proxy.port;
        async move {
            let mut s = handshake(port, config).await?;
            // TLS 1.3 reports a refused client certificate on first use.
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    };
    let served =
        |r: &Result<String, String>| r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
    let refused = |r: &Result<String, String>| r.is_err() || r.as_ref().is_ok_and(|r| r.is_empty());
    // A member connects twice: the second time it would resume.
    let member = client(Some(clients.issue("team-a", &["team-a"], true)));
    for _ in 0..2 {
        let r = attempt(member.clone()).await;
        assert!(served(&r), "{r:?}");
    }
    let r = attempt(client(None)).await;
    assert!(refused(&r), "{r:?}");
    let stranger = client(Some(strangers.issue("x", &["x"], true)));
    let r = attempt(stranger.clone()).await;
    assert!(refused(&r), "{r:?}");

    // The client CA file changes to the strangers' CA: without a signal,
    // new handshakes are checked against it, those of a client that has
    // been served before included.
    replace(&client_ca, &strangers.pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = attempt(stranger.clone()).await;
        if served(&r) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed client CA is not in force: {r:?}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = attempt(member.clone()).await;
    assert!(
        refused(&r),
        "the previous CA's client, after the change: {r:?}"
    );
    // A file that does not load leaves the CA in force as it was.
    replace(&client_ca, "not a certificate\n");
    assert!(
        proxy
            .logs(|log| log.contains("TLS client CA not reloaded"))
            .await,
        "{}",
        proxy.log()
    );
    let r = attempt(stranger).await;
    assert!(served(&r), "{r:?}");
}

/// A proxy (plain HTTP) in front of `up` (HTTPS), with `registry_extra`
/// added to its `[[registry]]`.
fn proxy_for_https_upstream(up: &TestRegistry, registry_extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n{registry_extra}\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n",
        h = up.host(),
        u = up.url(),
    ))
}

async fn manifest_status(proxy: &Proxy) -> u16 {
    common::http()
        .get(proxy.url("/v2/library/demo/manifests/v1"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_behind_a_private_ca_is_trusted_through_ca_file() {
    let ca = TestCa::new("upstream CA");
    let (cert, key) = ca.issue_files(ca.dir.path(), "upstream", &["127.0.0.1"], false);
    let up = TestRegistry::start_tls(RegistryTls {
        certificate: cert,
        key,
        client_cas: vec![],
        push_cert_dir: None,
    })
    .unwrap();
    assert!(up.url().starts_with("https://"));
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 62, &[30_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let ca_file = ca.write_to(ca.dir.path(), "ca.pem");

    let trusted = proxy_for_https_upstream(&up, &format!("ca_file = \"{}\"\n", ca_file.display()));
    let out = tempfile::tempdir().unwrap();
    common::pull(&trusted, "library/demo:v1", out.path(), false)
        .unwrap_or_else(|e| panic!("{e}\n{}", trusted.log()));
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }
    // Only that CA, not the system's: still trusted.
    let only = proxy_for_https_upstream(
        &up,
        &format!(
            "ca_file = \"{}\"\nsystem_roots = false\n",
            ca_file.display()
        ),
    );
    assert_eq!(manifest_status(&only).await, 200);

    // Without the CA the upstream's certificate is not trusted: 502.
    let untrusting = proxy_for_https_upstream(&up, "");
    assert_eq!(
        manifest_status(&untrusting).await,
        502,
        "{}",
        untrusting.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_wants_a_client_certificate_gets_the_configured_one() {
    let ca = TestCa::new("upstream CA");
    let clients = TestCa::new("upstream client CA");
    let (cert, key) = ca.issue_files(ca.dir.path(), "upstream", &["127.0.0.1"], false);
    let client_cas = clients.write_to(clients.dir.path(), "clients.pem");
    // skopeo pushes with a client certificate of its own.
    let push_dir = tempfile::tempdir().unwrap();
    let (pc, pk) = clients.issue("pusher", &["pusher"], true);
    std::fs::write(push_dir.path().join("client.cert"), pc).unwrap();
    std::fs::write(push_dir.path().join("client.key"), pk).unwrap();
    let up = TestRegistry::start_tls(RegistryTls {
        certificate: cert,
        key,
        client_cas: vec![client_cas],
        push_cert_dir: Some(push_dir.path().to_owned()),
    })
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 63, &[20_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let ca_file = ca.write_to(ca.dir.path(), "ca.pem");
    let (cc, ck) = clients.issue_files(clients.dir.path(), "proxy", &["proxy"], true);

    let with_cert = proxy_for_https_upstream(
        &up,
        &format!(
            "ca_file = \"{}\"\nclient_certificate = \"{}\"\nclient_key = \"{}\"\n",
            ca_file.display(),
            cc.display(),
            ck.display()
        ),
    );
    assert_eq!(
        manifest_status(&with_cert).await,
        200,
        "{}",
        with_cert.log()
    );
    let without = proxy_for_https_upstream(&up, &format!("ca_file = \"{}\"\n", ca_file.display()));
    // Refused in the handshake (502), or, with TLS 1.3, by closing the
    // connection after it, which looks like any broken connection (503).
    let status = manifest_status(&without).await;
    assert!(
        status == 502 || status == 503,
        "{status}\n{}",
        without.log()
    );
}

#[test]
fn unreadable_or_mismatched_tls_files_are_configuration_errors_naming_them() {
    let ca = TestCa::new("check CA");
    let dir = ca.dir.path();
    let (cert, key) = ca.issue_files(dir, "server", &["127.0.0.1"], false);
    let (_, other_key) = ca.issue_files(dir, "other", &["127.0.0.1"], false);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let rule = "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
    let check = |body: String| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("proxy.toml"), body).unwrap();
        common::run(d.path(), &["check"])
    };
    for (table, says) in [
        (tls_table(&junk, &key, ""), junk.display().to_string()),
        (tls_table(&cert, &junk, ""), junk.display().to_string()),
        (
            tls_table(&cert, &other_key, ""),
            other_key.display().to_string(),
        ),
        (
            tls_table(
                &cert,
                &key,
                &format!("client_ca = \"{}\"\n", junk.display()),
            ),
            junk.display().to_string(),
        ),
        (
            tls_table(&cert, &key, "").replace("server.pem", "missing.pem"),
            "missing.pem".to_owned(),
        ),
    ] {
        let (ok, out) = check(format!("{rule}{table}"));
        assert!(!ok && out.contains(&says), "{table}: {out}");
    }
    let (ok, out) = check(format!(
        "[[registry]]\nhost = \"docker.io\"\nca_file = \"{}\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n",
        junk.display()
    ));
    assert!(
        !ok && out.contains("ca_file") && out.contains("junk.pem"),
        "{out}"
    );
    let (ok, out) = check(format!(
        "[[registry]]\nhost = \"docker.io\"\nclient_certificate = \"{}\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n",
        cert.display()
    ));
    assert!(!ok && out.contains("go together"), "{out}");
    let (ok, out) = check(format!("{rule}{}", tls_table(&cert, &key, "")));
    assert!(ok, "{out}");
}

/// The peer client checks every new connection against the peer CA as
/// its file is then: it resumes no session, even with an endpoint that
/// offers one (an instance of another version, say). A plain rustls
/// server here gives tickets; after the CA file changes to a stranger's,
/// the client's next connection to it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_client_resumes_no_session_past_a_changed_peer_ca() {
    use cache_core::peer::PeerTls;
    let ca = TestCa::new("peer CA");
    let strangers = TestCa::new("stranger CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue_peer_files(dir.path(), "peer", &[PeerTls::DEFAULT_SERVER_NAME]);
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect(),
        rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap(),
    )
    .unwrap();
    assert!(
        server.send_tls13_tickets > 0,
        "this server offers resumption"
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut s) = acceptor.accept(tcp).await {
                let _ = s.write_all(b"ok").await;
                let _ = s.shutdown().await;
            }
        }
    });
    let tls = PeerTls {
        certificate: cert.clone(),
        key: key.clone(),
        ca: ca.write_to(dir.path(), "peer-ca.pem"),
        server_name: PeerTls::DEFAULT_SERVER_NAME.to_owned(),
    };
    let config = Arc::new(cache_upstream::peer_client_tls(&tls).unwrap());
    let connect = || {
        let config = config.clone();
        async move {
            let mut s = handshake(port, config).await?;
            // Reading to the end takes in the server's session tickets.
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(got)
        }
    };
    for _ in 0..2 {
        assert_eq!(connect().await.unwrap(), b"ok");
    }
    strangers.write_to(dir.path(), "peer-ca.pem");
    let r = connect().await;
    assert!(r.is_err(), "trusted past the CA's change: {r:?}");
}
