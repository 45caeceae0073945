//! The container image (`scripts/image.sh`, which `scripts/test.sh` runs
//! before the suite) run with podman: host network on a free loopback
//! port, a configuration and a store volume mounted; skopeo pulls through
//! it from the Debian distribution registry; SIGTERM stops it cleanly
//! within its grace period; started again on the same volume, it serves
//! the image from its store.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, free_port, require, write_image};

const IMAGE: &str = "localhost/registry-proxy:latest";

/// podman with a containers.conf that suits this machine (runc, cgroupfs,
/// no default ulimits above the hard limits), unless the caller set one.
struct Podman {
    bin: std::path::PathBuf,
    conf: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let bin = require("podman", "podman").unwrap_or_else(|e| panic!("{e}"));
        require("runc", "runc").unwrap_or_else(|e| panic!("{e}"));
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { bin, conf }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        if std::env::var_os("CONTAINERS_CONF").is_none() {
            cmd.env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("podman: {e}"))
    }

    /// The container's output (podman prints its stderr on its own).
    fn logs(&self, name: &str) -> String {
        let out = self.run(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Removes the container when the test ends, however it ends.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rm", "-f", "-t", "0", &self.name]);
    }
}

/// Whether `GET /v2/` on `port` answers 200.
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200")
}

fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(port) {
        assert!(
            Instant::now() < deadline,
            "the container did not answer on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pull(port: u16, dest: &Path) -> Result<(), String> {
    cache_upstream::testing::skopeo(&[
        "copy".into(),
        "--insecure-policy".into(),
        "--src-tls-verify=false".into(),
        format!("docker://127.0.0.1:{port}/library/demo:v1"),
        format!("dir:{}", dest.display()),
    ])
}

#[test]
fn the_image_serves_pulls_stops_on_sigterm_and_keeps_its_store() {
    let podman = Podman::new();
    let images = podman.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.lines().any(|l| l == IMAGE),
        "{IMAGE} not built: run scripts/image.sh (scripts/test.sh does)"
    );
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 71, &[200_000, 30_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n[storage]\npath = \"/data\"\n[server]\ndrain_delay = \"1s\"\nshutdown_grace = \"10s\"\n[log]\nformat = \"json\"\n{}",
        // The endpoint by name: the static binary resolves names in a
        // FROM scratch image (/etc/hosts here).
        common::config_for(&up.host(), &up.url().replace("127.0.0.1", "localhost"), "")
            .replace("[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n", "")
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The image runs as 65532; the store volume must be its to write.
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();

    let name = format!("registry-proxy-test-{port}");
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        &format!("{}:/etc/registry-proxy/config.toml:ro", cfg.display()),
        "-v",
        &format!("{}:/data", data.display()),
        IMAGE,
    ]);
    wait_http(port);
    let first = tempfile::tempdir().unwrap();
    pull(port, first.path()).unwrap_or_else(|e| panic!("{e}\n{}", podman.logs(&name)));
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(first.path().join(d.hex())).unwrap()));
    }
    let fetched = up.blob_gets();
    assert!(fetched >= 2, "the layers came from the upstream");

    // SIGTERM (podman stop), and a clean exit within the grace period.
    let t = Instant::now();
    podman.ok(&["stop", "-t", "20", &name]);
    let took = t.elapsed();
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    let logs = podman.logs(&name);
    assert_eq!(code, "0", "exit code after SIGTERM:\n{logs}");
    assert!(
        took < Duration::from_secs(15),
        "stopping took {took:?}:\n{logs}"
    );
    assert!(logs.contains("all connections closed"), "{logs}");
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // Started again on the same volume: the image is in the store.
    podman.ok(&["start", &name]);
    wait_http(port);
    let again = tempfile::tempdir().unwrap();
    pull(port, again.path()).unwrap();
    assert_eq!(
        up.blob_gets(),
        fetched,
        "no blob fetched again after the restart"
    );
    let logs = podman.logs(&name);
    assert!(logs.contains("\"cache\":\"hit\""), "{logs}");
    drop(container);
}

/// The image runs the way container images are run: the binary is the
/// entry point, so arguments replace only the default command. A
/// configuration of one's own passed as `--config` (as `podman run IMAGE
/// --config ...`, or `serve --config ...`, or Kubernetes `args:`) is the
/// one served; a subcommand alone (`check`) reads the image's default.
#[test]
fn the_image_takes_its_configuration_and_subcommand_as_arguments() {
    let podman = Podman::new();
    let images = podman.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.lines().any(|l| l == IMAGE),
        "{IMAGE} not built: run scripts/image.sh (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();

    // The image's own configuration, checked by the subcommand alone.
    let out = podman.run(&["run", "--rm", IMAGE, "check"]);
    assert!(
        out.status.success(),
        "check with the image's configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for args in [&["--config"][..], &["serve", "--config"][..]] {
        let port = free_port();
        std::fs::write(
            conf.join("mine.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\n[storage]\npath = \"/data\"\n{}",
                common::config_for("127.0.0.1:9", "http://127.0.0.1:9", "")
                    .replace("[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n", "")
            ),
        )
        .unwrap();
        let name = format!("registry-proxy-args-{port}");
        let container = Container {
            podman: &podman,
            name: name.clone(),
        };
        let mut run = vec![
            "run".to_owned(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--network".into(),
            "host".into(),
            "-v".into(),
            format!("{}:/conf:ro", conf.display()),
            "-v".into(),
            format!("{}:/data", data.display()),
            IMAGE.into(),
        ];
        run.extend(args.iter().map(|a| a.to_string()));
        run.push("/conf/mine.toml".into());
        podman.ok(&run.iter().map(String::as_str).collect::<Vec<_>>());
        // It listens where the given file says, not on the image's 5000.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            let state = podman.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
            assert!(
                Instant::now() < deadline && state != "exited",
                "podman run {IMAGE} {}: {state}\n{}",
                args.join(" "),
                podman.logs(&name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(container);
    }
}
