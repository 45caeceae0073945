//! The embedding example as a user runs it: against the Debian distribution
//! registry, warming an image at start, then serving it (and its own route).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, free_port, write_image};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_embed"))
            .args([
                up.url(),
                format!("127.0.0.1:{port}"),
                "library/demo:v1".into(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let home = loop {
        if let Ok(r) = c.get(format!("{base}/")).send().await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the example did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(home, "the host application");
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
