//! The web console in a real browser: Debian's Chromium, headless, driven
//! over WebDriver (Debian's `chromium-driver`, with the `fantoccini`
//! client), against the running server after skopeo pulled two images
//! through it from the Debian distribution registry: one served, one
//! refused by a rule's signature policy. Screenshots of each page are
//! saved under the target directory (`CARGO_TARGET_TMPDIR`,
//! `console-screenshots/`).

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, free_port, require, skopeo, write_image};
use common::{Proxy, http};
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver on a loopback port and a Chromium session through it,
/// with a fresh profile; both end when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    async fn start(shots: &str) -> Browser {
        let chromium = require("chromium", "chromium").unwrap_or_else(|e| panic!("{e}"));
        let driver_bin =
            require("chromedriver", "chromium-driver").unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        // A process group of its own: dropping the browser ends chromedriver
        // and the Chromium processes it started, not chromedriver alone.
        let driver = Command::new(driver_bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                // No page may need JavaScript: the browser runs none.
                "prefs": { "profile.managed_default_content_settings.javascript": 2 },
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("a Chromium session: {e}"));
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots")
            .join(shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            _profile: profile,
            shots,
        }
    }

    /// Saves what the window shows as `<name>.png`.
    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        // A page replaced between finding and reading is read again.
        for _ in 0..50 {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.text().await {
                    Ok(t) => return t,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                Err(e) => panic!("{css}: {e}\n{}", self.source().await),
            }
        }
        panic!("{css}: the page kept changing")
    }

    /// Clicks what `css` finds and waits until the browser has left the
    /// page it was on.
    async fn click(&self, locator: Locator<'_>) {
        let from = self.client.current_url().await.unwrap().to_string();
        self.client
            .find(locator)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .click()
            .await
            .unwrap();
        self.left(from).await;
    }

    /// Types `value` into the field `field` of the form `css`, submits it
    /// and waits until the browser has left the page it was on.
    async fn submit(&self, css: &str, field: &str, value: &str) {
        let from = self.client.current_url().await.unwrap().to_string();
        let form = self.client.form(Locator::Css(css)).await.unwrap();
        form.set_by_name(field, value).await.unwrap();
        form.submit().await.unwrap();
        self.left(from).await;
    }

    async fn left(&self, from: String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client.current_url().await.unwrap().as_str() == from {
            assert!(Instant::now() < deadline, "still at {from}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The new page's body, once it is there.
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("body"))
            .await
            .unwrap();
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: a killed chromedriver leaves its Chromium behind.
        if let Ok(pgid) = i32::try_from(self.driver.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group
            // the driver leads (it was started with `process_group(0)`).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let out = Command::new(require("htpasswd", "apache2-utils").unwrap())
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    let p = dir.join("htpasswd");
    std::fs::write(&p, out.stdout).unwrap();
    p
}

fn pull_as(proxy: &Proxy, creds: &str, reference: &str, dest: &Path) -> Result<(), String> {
    skopeo(&[
        "copy".into(),
        "--insecure-policy".into(),
        "--src-tls-verify=false".into(),
        format!("--src-creds={creds}"),
        format!("docker://{}/{reference}", proxy.host()),
        format!("dir:{}", dest.display()),
    ])
}

/// Tags `repo:from`'s manifest as each of `tags` in the upstream (the
/// registry's own API: the manifest PUT again under another name).
async fn retag(up: &TestRegistry, repo: &str, from: &str, tags: &[String]) {
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    let r = http()
        .get(format!("{}/v2/{repo}/manifests/{from}", up.url()))
        .header("accept", OCI)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let manifest = r.bytes().await.unwrap();
    for t in tags {
        let r = http()
            .put(format!("{}/v2/{repo}/manifests/{t}", up.url()))
            .header("content-type", OCI)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{t}");
    }
}

/// Every page the console answers forbids script, and none carries any.
async fn assert_no_script(url: &str) {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{url}: {csp}"
    );
    let body = r.text().await.unwrap();
    assert!(!body.to_ascii_lowercase().contains("<script"), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_served_and_a_refused_pull_explains_names_and_hides_from_strangers() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let src = tempfile::tempdir().unwrap();
    let served = write_image(src.path(), "v1", 21, &[30_000, 5_000]);
    up.push(&served.layout, "v1", "library/app").unwrap();
    let unsigned_src = tempfile::tempdir().unwrap();
    let unsigned = write_image(unsigned_src.path(), "v1", 22, &[10_000]);
    up.push(&unsigned.layout, "v1", "signed/tool").unwrap();

    let files = tempfile::tempdir().unwrap();
    let key = common::cosign_public_key(files.path());
    let users = htpasswd(files.path(), "alice", "alice-pw");
    // carol may pull library/*; dave is a user with no grant at all.
    let (carol, dave) = (files.path().join("carol"), files.path().join("dave"));
    std::fs::write(&carol, "carol-pw\n").unwrap();
    std::fs::write(&dave, "dave-pw\n").unwrap();
    let admin_port = free_port();
    let extra = format!(
        "[[rule]]\nname = \"signed\"\nsource = \"{h}/signed/*\"\ntarget = \"signed/*\"\n[rule.signatures]\ncosign_keys = [\"{k}\"]\nmode = \"enforce\"\n\n\
         [auth]\nhtpasswd = \"{u}\"\n\n\
         [[auth.user]]\nname = \"carol\"\npassword_file = \"{c}\"\n\n[[auth.user]]\nname = \"dave\"\npassword_file = \"{d}\"\n\n\
         [[auth.grant]]\nprincipals = [\"carol\"]\nrepositories = [\"library/*\"]\nactions = [\"pull\"]\n\n\
         [server]\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\n[console]\nmain_listener = true\npage_size = 20\n",
        h = up.host(),
        k = key.display(),
        u = users.display(),
        c = carol.display(),
        d = dave.display(),
    );
    let proxy = Proxy::start(&common::config(&up, &extra));
    let out = tempfile::tempdir().unwrap();
    pull_as(&proxy, "alice:alice-pw", "library/app:v1", out.path())
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let refused = pull_as(&proxy, "alice:alice-pw", "signed/tool:v1", out.path()).unwrap_err();
    assert!(refused.contains("no signature"), "{refused}");
    // 25 more tags of the served image, pulled through the proxy (its
    // manifests only): 26 tags, two pages of 20.
    let extra: Vec<String> = (0..25).map(|i| format!("x{i:02}")).collect();
    retag(&up, "library/app", "v1", &extra).await;
    for t in &extra {
        let r = http()
            .get(proxy.url(&format!("/v2/library/app/manifests/{t}")))
            .basic_auth("alice", Some("alice-pw"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{t}");
    }

    let admin = format!("http://127.0.0.1:{admin_port}/ui");
    let b = Browser::start("admin").await;

    // The overview: the refusal among recent denials, with its reason.
    b.client.goto(&format!("{admin}/")).await.unwrap();
    let denials = b.text("#denials").await;
    assert!(denials.contains("signed/tool:v1"), "{denials}");
    assert!(denials.contains("no signature"), "{denials}");
    assert!(b.text("#inflight").await.contains('0'));
    b.shot("overview").await;

    // Both repositories are listed.
    b.client
        .goto(&format!("{admin}/repositories"))
        .await
        .unwrap();
    let repos = b.text("#repositories").await;
    assert!(
        repos.contains("library/app") && repos.contains("signed/tool"),
        "{repos}"
    );
    b.shot("repositories").await;
    b.submit("#repository-search", "q", "signed").await;
    let found = b.text("#repositories").await;
    assert!(
        found.contains("signed/tool") && !found.contains("library/app"),
        "{found}"
    );
    b.client
        .goto(&format!("{admin}/repositories"))
        .await
        .unwrap();

    // The refused one shows why, as the pull met it.
    b.click(Locator::LinkText("signed/tool")).await;
    let why = b.text("#refused").await;
    assert!(
        why.contains("signatures") && why.contains("no signature"),
        "{why}"
    );
    assert!(why.contains("v1"), "{why}");
    b.shot("repository-refused").await;
    b.click(Locator::Css("#refused a")).await;
    let verdicts = b.text("#verdicts").await;
    assert!(
        verdicts.contains("refused") && verdicts.contains("no signature"),
        "{verdicts}"
    );
    assert!(b.text("#not-stored").await.contains("not stored"));
    assert!(b.source().await.contains(&unsigned.digest.to_string()));
    b.shot("image-refused").await;

    // The served one: its tag with size and pulls, its layers.
    b.client
        .goto(&format!("{admin}/repository?name=library/app"))
        .await
        .unwrap();
    let tags = b.text("#tags").await;
    assert!(tags.contains("v1"), "{tags}");
    let row = tags
        .lines()
        .find(|l| l.starts_with("v1"))
        .unwrap_or("")
        .to_owned();
    assert!(row.contains("KiB"), "a size: {row}");
    assert!(b.text("#tag-total").await.starts_with("26 "));
    assert!(tags.contains("x18") && !tags.contains("x19"), "{tags}");
    b.shot("repository-served").await;
    // The next page: the last six tags.
    b.click(Locator::Css("#next")).await;
    let second = b.text("#tags").await;
    assert!(
        (19..25).all(|i| second.contains(&format!("x{i}")))
            && !second.contains("x18")
            && !second.contains("v1"),
        "{second}"
    );
    assert!(
        b.client.find(Locator::Css("#next")).await.is_err(),
        "the last page"
    );
    b.shot("repository-page-2").await;
    // A search: the tags containing "x1".
    b.submit("#tag-search", "q", "x1").await;
    assert!(
        b.text("#tag-total")
            .await
            .starts_with("10 cached tag(s) matching x1")
    );
    let found = b.text("#tags").await;
    assert!(
        (10..20).all(|i| found.contains(&format!("x{i}"))) && !found.contains("x09"),
        "{found}"
    );
    b.shot("repository-search").await;
    b.client
        .goto(&format!("{admin}/repository?name=library/app"))
        .await
        .unwrap();
    b.click(Locator::LinkText("v1")).await;
    let layers = b.text("#layers").await;
    for (d, _) in &served.layers {
        assert!(layers.contains(&d.to_string()), "{d}: {layers}");
    }
    assert!(
        layers.contains("yes"),
        "skopeo's pull stored the layers: {layers}"
    );
    assert!(b.text("#pulls").await.starts_with('1'), "one pull counted");
    b.shot("image-served").await;

    // The explain box answers a typed name: a local one, an upstream one,
    // and one no rule declares.
    b.client.goto(&format!("{admin}/rules")).await.unwrap();
    let rules = b.text("#rules").await;
    assert!(
        rules.contains("signed") && rules.contains("signatures: enforced"),
        "{rules}"
    );
    for (typed, says) in [
        ("library/nginx", "wildcard rule \"lib\""),
        (
            &format!("{}/signed/other", up.host()) as &str,
            "is served as signed/other through rule \"signed\"",
        ),
        ("elsewhere/app", "no rule declares"),
    ] {
        b.submit("#explain-form", "explain", typed).await;
        let answer = b
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#explain-result"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(answer.contains(says), "{typed}: {answer}");
    }
    b.shot("rules-explain").await;
    drop(b);
    for page in [
        "/",
        "/rules?explain=library/nginx",
        "/repositories",
        "/repository?name=signed/tool",
        "/repository?name=library/app",
        "/image?name=library/app&ref=v1",
    ] {
        assert_no_script(&format!("{admin}{page}")).await;
    }

    // On the main listener the console is behind the pull side's auth:
    // a stranger, or a wrong password, sees neither repository.
    let b = Browser::start("main").await;
    let main = format!("127.0.0.1:{}/ui", proxy.port);
    for who in ["", "mallory:guess@", "alice:wrong@"] {
        b.client
            .goto(&format!("http://{who}{main}/repositories"))
            .await
            .unwrap();
        let page = b.source().await;
        assert!(
            !page.contains("library/app") && !page.contains("signed/tool"),
            "{who}: {page}"
        );
    }
    b.shot("main-stranger").await;
    let r = http()
        .get(format!("http://{main}/repositories"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    // Whoever may pull may look, and sees what they may pull.
    b.client
        .goto(&format!("http://alice:alice-pw@{main}/repositories"))
        .await
        .unwrap();
    let repos = b.text("#repositories").await;
    assert!(
        repos.contains("library/app") && repos.contains("signed/tool"),
        "{repos}"
    );
    assert!(b.source().await.contains("signed in as alice"));
    b.shot("main-alice").await;
    // Grants decide what a signed-in viewer sees: carol, granted
    // library/*, sees library/app only; dave, granted nothing, neither.
    let b = Browser::start("main-grants").await;
    b.client
        .goto(&format!("http://carol:carol-pw@{main}/repositories"))
        .await
        .unwrap();
    let repos = b.text("#repositories").await;
    assert!(
        repos.contains("library/app") && !repos.contains("signed/tool"),
        "carol: {repos}"
    );
    b.shot("main-carol").await;
    let page = http()
        .get(format!("http://{main}/repositories"))
        .basic_auth("dave", Some("dave-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "dave signs in");
    let page = page.text().await.unwrap();
    assert!(
        page.contains("signed in as dave")
            && !page.contains("library/app")
            && !page.contains("signed/tool"),
        "dave: {page}"
    );
    let r = http()
        .get(format!("http://{main}/repository?name=library/app"))
        .basic_auth("dave", Some("dave-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a repository dave may not read is not there"
    );
}
