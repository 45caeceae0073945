//! A write in a child process killed with SIGKILL leaves nothing partial and
//! nothing in staging, and what was committed before the crash is intact.
//!
//! The test binary re-executes itself: with `FSSTORE_CRASH_CHILD=<root>` it
//! is the child, which commits blob A, stages half of blob B, reports, and
//! waits to be killed.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::testing::content;
use cache_core::{BlobStore, BlobStoreExt, Digest, MetaKey};
use cache_store::FsStore;

const CHILD_ENV: &str = "FSSTORE_CRASH_CHILD";

fn blobs() -> (Bytes, Bytes) {
    (content(11, 300_000), content(12, 4 * 1024 * 1024))
}

fn child(root: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = FsStore::open(&root).await.unwrap();
        let (a, b) = blobs();
        store.put(&Digest::sha256_of(&a), a).await.unwrap();
        let mut w = store
            .stage(&Digest::sha256_of(&b), Some(b.len() as u64))
            .await
            .unwrap();
        w.write(b.slice(..b.len() / 2)).await.unwrap();
        println!("READY");
        // Bounded: the parent kills us long before this ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(w);
        std::process::exit(3);
    });
}

fn parent() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().to_path_buf();
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(CHILD_ENV, &root)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "READY" {
        let _ = child.kill();
        return Err(format!("child did not get ready: {line:?}"));
    }
    let staged = std::fs::read_dir(root.join("staging")).unwrap().count();
    if staged != 1 {
        let _ = child.kill();
        return Err(format!(
            "expected the partial write in staging before the kill, found {staged} files"
        ));
    }
    child.kill().map_err(|e| e.to_string())?; // SIGKILL
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.signal() != Some(9) {
        return Err(format!("child was not killed by SIGKILL: {status:?}"));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = FsStore::open(&root).await.map_err(|e| e.to_string())?;
        let (a, b) = blobs();
        let (da, db) = (Digest::sha256_of(&a), Digest::sha256_of(&b));
        if store.staging_count() != 0 {
            return Err(format!(
                "{} files left in staging after reopen",
                store.staging_count()
            ));
        }
        if store.stat(&db).await.map_err(|e| e.to_string())?.is_some() {
            return Err("the half-written blob is visible".into());
        }
        let listed = store.list_all().await.map_err(|e| e.to_string())?;
        if listed.len() != 1 || listed[0].digest != da {
            return Err(format!("expected only blob A listed, got {listed:?}"));
        }
        let got = store.get_bytes(&da).await.map_err(|e| e.to_string())?;
        if !da.verifies(&got) {
            return Err("blob A committed before the crash does not verify".into());
        }
        // The store is fully usable: B can be written again.
        store.put(&db, b).await.map_err(|e| e.to_string())?;
        store
            .put_meta(
                &MetaKey::parse("after/crash").unwrap(),
                Bytes::from_static(b"ok"),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn main() {
    if let Ok(root) = std::env::var(CHILD_ENV) {
        child(root);
        return;
    }
    let start = Instant::now();
    let name = "fs_store_write_killed_by_sigkill_leaves_nothing_partial";
    match parent() {
        Ok(()) => {
            println!("test {name} ... ok ({:.2?})", start.elapsed());
            println!("crash: 1 passed, 0 failed");
        }
        Err(e) => {
            println!("test {name} ... FAILED: {e}");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}
