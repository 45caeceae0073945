//! podman against the running server's token flow: `podman login` with a
//! robot token, then `podman pull` of what its grant covers (and not of
//! what it does not), with storage and credentials of the test's own.

mod access_kit;
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use access_kit::sha256_hex;
use cache_upstream::testing::{TestRegistry, require, write_image};
use common::Proxy;

/// podman with storage, runtime directories, credentials and a
/// containers.conf of the test's own (runc, cgroupfs, as image.rs runs it).
struct Podman {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let bin = require("podman", "podman").unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { bin, dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let path = |p: &str| d.join(p).display().to_string();
        Command::new(&self.bin)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .args([
                "--root",
                &path("root"),
                "--runroot",
                &path("runroot"),
                "--storage-driver",
                "vfs",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("podman: {e}"))
    }

    fn auth_file(&self) -> std::path::PathBuf {
        self.dir.path().join("auth.json")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn podman_logs_in_with_a_robot_token_and_pulls_what_its_grant_covers() {
    let podman = Podman::new();
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 21, &[30_000]);
    up.push(&img.layout, "v1", "ci/app").unwrap();
    up.push(&img.layout, "v1", "library/other").unwrap();
    let token = "podman-robot-token-8c1e2f";
    let proxy = Proxy::start(&common::config_for(
        &up.host(),
        &up.url(),
        &format!(
            "\n[[rule]]\nname = \"ci\"\nsource = \"{h}/ci/*\"\ntarget = \"ci/*\"\n\
             [auth]\n[[auth.token]]\nname = \"builder\"\nsha256 = \"{sha}\"\n\
             [[auth.grant]]\nprincipals = [\"builder\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\"]\n",
            h = up.host(),
            sha = sha256_hex(token),
        ),
    ));
    let host = proxy.host();

    let bad = podman.run(&[
        "login",
        "--tls-verify=false",
        "-u",
        "builder",
        "-p",
        "wrong",
        &host,
    ]);
    assert!(
        !bad.status.success(),
        "a wrong token logs in: {}",
        text(&bad)
    );
    let login = podman.run(&[
        "login",
        "--tls-verify=false",
        "-u",
        "builder",
        "-p",
        token,
        &host,
    ]);
    assert!(login.status.success(), "{}\n{}", text(&login), proxy.log());
    assert!(Path::new(&podman.auth_file()).exists());

    let image = format!("{host}/ci/app:v1");
    let pull = podman.run(&["pull", "--tls-verify=false", &image]);
    assert!(pull.status.success(), "{}\n{}", text(&pull), proxy.log());
    let listed = podman.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        text(&listed).contains(&format!("{host}/ci/app:v1")),
        "{}",
        text(&listed)
    );
    assert!(
        proxy.logs_blocking(|l| l.contains("path=/token status=200"))
            && proxy.logs_blocking(|l| l.contains("principal=\"builder\"")),
        "{}",
        proxy.log()
    );

    let refused = podman.run(&[
        "pull",
        "--tls-verify=false",
        &format!("{host}/library/other:v1"),
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("builder may not pull library/other"),
        "{}",
        text(&refused)
    );
    assert_eq!(up.requests("GET", "library/other/"), 0);
}
