//! The embedding example as a user runs it: against the Debian distribution
//! registry, warming an image at start, then serving it (and its own
//! route); and with pull-side auth (an htpasswd file made by `htpasswd
//! -B`) and the vulnerability gate (`TestScanner`, which pulls what it
//! scans through the example with the scoped credential it is given),
//! pulled from with skopeo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cache_upstream::testing::{
    PACKAGES_LABEL, TestRegistry, TestScanner, free_port, require, skopeo, write_image,
    write_labeled_image,
};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example, started in `dir` with `args` and `env`; its stdout lines
/// arrive on the receiver.
fn start(
    dir: &std::path::Path,
    args: &[String],
    env: &[(&str, String)],
) -> (Kill, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embed"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Kill(child), rx)
}

/// Waits for a line of the example's output starting with `prefix`.
fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?} from the example: {e}"),
        }
    }
}

/// `GET base/` until the example answers.
async fn home(c: &reqwest::Client, base: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.get(format!("{base}/")).send().await {
            return r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the example did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_warms_an_image_and_serves_it_beside_its_own_route() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 41, &[50_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = [
        up.url(),
        format!("127.0.0.1:{port}"),
        "library/demo:v1".into(),
    ];
    let (_child, lines) = start(dir.path(), &args, &[]);
    wait_for_line(&lines, "warmed library/demo:v1");
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(home(&c, &base).await, "the host application");
    let warmed = up.blob_gets();
    assert_eq!(warmed, 2, "config and layer, pulled at start");
    let (d, _) = &img.layers[0];
    let r = c
        .get(format!("{base}/v2/library/demo/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "hit");
    assert!(d.verifies(&r.bytes().await.unwrap()));
    let r = c
        .get(format!("{base}/v2/acme/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "only the rule's names");
    assert_eq!(up.blob_gets(), warmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_only_with_credentials_and_only_images_the_scanner_passes() {
    let up = TestRegistry::start().unwrap();
    let scanner = TestScanner::start();
    scanner.advise("openssl", "CVE-2099-0001", "Critical");
    // Each scan also tries its scoped credential on another repository.
    scanner.probe("library/vulnerable", "v1");
    let src = tempfile::tempdir().unwrap();
    let clean = write_labeled_image(
        &src.path().join("clean"),
        "v1",
        51,
        &[40_000],
        &[(PACKAGES_LABEL, "zlib 1.3.1")],
    );
    let vulnerable = write_labeled_image(
        &src.path().join("vulnerable"),
        "v1",
        52,
        &[40_000],
        &[(PACKAGES_LABEL, "openssl 3.0.1")],
    );
    up.push(&clean.layout, "v1", "library/clean").unwrap();
    up.push(&vulnerable.layout, "v1", "library/vulnerable")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = Command::new(require("htpasswd", "apache2-utils").unwrap())
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .unwrap();
    assert!(htpasswd.status.success());
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let port = free_port();
    let env = [
        ("EMBED_HTPASSWD", "htpasswd".to_owned()),
        ("EMBED_SCANNER", scanner.url()),
    ];
    let (_child, _lines) = start(dir.path(), &[up.url(), format!("127.0.0.1:{port}")], &env);
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(home(&c, &base).await, "the host application");
    let copy = |image: &str, creds: Option<&str>, to: &std::path::Path| {
        let mut args = vec![
            "copy".to_owned(),
            "--insecure-policy".to_owned(),
            "--src-tls-verify=false".to_owned(),
        ];
        if let Some(creds) = creds {
            args.push(format!("--src-creds={creds}"));
        }
        args.push(format!("docker://127.0.0.1:{port}/{image}"));
        args.push(format!("dir:{}", to.display()));
        skopeo(&args)
    };

    // No credentials: 401 with a Basic challenge, and skopeo is refused.
    let r = c
        .get(format!("{base}/v2/library/clean/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    let out = tempfile::tempdir().unwrap();
    let e = copy("library/clean:v1", None, out.path()).unwrap_err();
    assert!(
        e.to_lowercase().contains("authentication required")
            || e.to_lowercase().contains("unauthorized"),
        "{e}"
    );
    let e = copy("library/clean:v1", Some("alice:wrong"), out.path()).unwrap_err();
    assert!(e.to_lowercase().contains("unauthorized"), "{e}");
    assert_eq!(up.blob_gets(), 0, "nothing was fetched for them");

    // With credentials, a clean image: scanned (the scanner pulled it
    // through the example with its scoped credential), then served.
    copy("library/clean:v1", Some("alice:s3cret"), out.path()).unwrap();
    for (d, size) in &clean.layers {
        let got = std::fs::read(out.path().join(d.hex())).unwrap();
        assert_eq!(got.len() as u64, *size);
        assert!(d.verifies(&got), "{d} byte-exact");
    }
    let scans = scanner.scans();
    let scan = scans
        .iter()
        .find(|s| s.repository == "library/clean")
        .unwrap_or_else(|| panic!("the clean image was scanned: {scans:?}"));
    assert_eq!(
        scan.registry_url, base,
        "the scanner pulls from the example"
    );
    assert_eq!(
        scan.probe_status,
        Some(403),
        "its credential reads its own repository only"
    );
    assert!(
        scanner.violations().is_empty(),
        "{:?}",
        scanner.violations()
    );

    // With credentials, a vulnerable image: 403 with the finding, and
    // skopeo is refused.
    let r = c
        .get(format!("{base}/v2/library/vulnerable/manifests/v1"))
        .basic_auth("alice", Some("s3cret"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("CVE-2099-0001"),
        "{body}"
    );
    let denied = tempfile::tempdir().unwrap();
    let e = copy("library/vulnerable:v1", Some("alice:s3cret"), denied.path()).unwrap_err();
    assert!(e.contains("denied") || e.contains("DENIED"), "{e}");
    for (d, _) in &vulnerable.layers {
        assert!(!denied.path().join(d.hex()).exists(), "no layer of {d}");
    }
}
