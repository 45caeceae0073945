//! `cache-warm`: pre-pulls images into a cache store through the same
//! caching rules and configuration as `registry-proxy`, so the first real
//! pull is all hits; and runs `gc` (apply the quota and TTLs) and `scrub`
//! (re-verify stored content, drop what is corrupt) on a store.
//!
//! The store is locked while `cache-warm` runs; stop the server first when
//! they share a filesystem store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::events::NoEvents;
use cache_core::manifest::{ParsedManifest, Platform};
use cache_core::{Digest, ImageRef, PullThroughCache, Reference, RepoName, media_types};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use registry_proxy::config::{Config, DEFAULT_CONFIG, parse_size};
use registry_proxy::{build_cache, open_store};

/// Pre-pull images into a pull-through cache's store; gc and scrub it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The registry-proxy configuration file (default: registry-proxy.toml
    /// in the working directory if present, else the built-in default).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pull images (upstream references, e.g. docker.io/library/nginx:1.27)
    /// into the store through the caching rules.
    Pull {
        /// Only these platforms of a multi-platform image (os/arch[/variant]); repeatable.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Blobs downloaded at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove content past its rule's TTL, then least recently used content
    /// until the store is under the quota.
    Gc {
        /// The quota (default: the configuration's storage.quota).
        #[arg(long)]
        quota: Option<String>,
    },
    /// Re-hash every stored blob; remove those that do not match their digest.
    Scrub,
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    let path = path.clone().or_else(|| {
        let p = PathBuf::from("registry-proxy.toml");
        p.is_file().then_some(p)
    });
    match path {
        Some(p) => Config::load(&p).map_err(|e| e.to_string()),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            Config::parse(DEFAULT_CONFIG, &cwd).map_err(|e| e.to_string())
        }
    }
}

/// One image's blobs: resolves the rule, fetches the manifest (and the
/// platform manifests an index lists, filtered), and returns what to pull.
async fn plan(
    cache: &PullThroughCache,
    image: &str,
    platforms: &[Platform],
) -> Result<(RepoName, Vec<(Digest, u64)>), String> {
    let r = ImageRef::parse(image).map_err(|e| e.to_string())?;
    let local = cache
        .rules()
        .resolve_upstream(&r.registry, &r.repository)
        .map_err(|e| format!("{image}: {e}"))?
        .local;
    let top = cache
        .manifest(&local, &r.reference(), media_types::ALL_MANIFESTS)
        .await
        .map_err(|e| format!("{image}: {e}"))?;
    let parsed = ParsedManifest::parse(&top.bytes).map_err(|e| format!("{image}: {e}"))?;
    let mut manifests = Vec::new();
    if parsed.is_index() {
        for (d, p) in &parsed.manifests {
            let wanted = platforms.is_empty()
                || p.as_ref()
                    .is_some_and(|p| platforms.iter().any(|a| a.admits(p)));
            if wanted {
                let m = cache
                    .manifest(
                        &local,
                        &Reference::Digest(d.digest.clone()),
                        media_types::ALL_MANIFESTS,
                    )
                    .await
                    .map_err(|e| format!("{image}@{}: {e}", d.digest))?;
                manifests
                    .push(ParsedManifest::parse(&m.bytes).map_err(|e| format!("{image}: {e}"))?);
            }
        }
        if manifests.is_empty() {
            return Err(format!("{image}: no manifest for the requested platforms"));
        }
    } else {
        manifests.push(parsed);
    }
    let mut blobs: Vec<(Digest, u64)> = manifests
        .iter()
        .flat_map(|m| m.config.iter().chain(m.layers.iter()))
        .map(|d| (d.digest.clone(), d.size))
        .collect();
    blobs.sort();
    blobs.dedup();
    Ok((local, blobs))
}

async fn pull(
    cache: PullThroughCache,
    images: Vec<String>,
    platforms: Vec<String>,
    concurrency: usize,
) -> ExitCode {
    let mut pats = Vec::new();
    for p in &platforms {
        match Platform::parse(p) {
            Some(p) => pats.push(p),
            None => {
                eprintln!("cache-warm: --platform {p:?}: expected os/arch[/variant]");
                return ExitCode::from(2);
            }
        }
    }
    let mut failures = Vec::new();
    let mut work = Vec::new();
    for image in &images {
        match plan(&cache, image, &pats).await {
            Ok((local, blobs)) => {
                work.extend(blobs.into_iter().map(|(d, s)| (local.clone(), d, s)))
            }
            Err(e) => failures.push(e),
        }
    }
    work.sort_by(|a, b| a.1.cmp(&b.1));
    work.dedup_by(|a, b| a.1 == b.1);
    let total_bytes: u64 = work.iter().map(|w| w.2).sum();
    let bars = MultiProgress::new();
    let total = bars.add(ProgressBar::new(total_bytes));
    total.set_style(
        ProgressStyle::with_template(
            "total {bytes}/{total_bytes} [{bar:40}] {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let style = ProgressStyle::with_template("{msg:20} {bytes}/{total_bytes} [{bar:30}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let done_bytes = Arc::new(AtomicU64::new(0));
    let results: Vec<Result<(), String>> = futures::stream::iter(work.clone())
        .map(|(local, d, size)| {
            let cache = cache.clone();
            let bar = bars.insert_before(&total, ProgressBar::new(size));
            bar.set_style(style.clone());
            bar.set_message(d.hex()[..12].to_owned());
            let total = total.clone();
            let done = done_bytes.clone();
            async move {
                let r = cache
                    .blob(&local, &d, None)
                    .await
                    .map_err(|e| format!("{d}: {e}"))?;
                let mut s = r.body.into_stream();
                while let Some(c) = s.next().await {
                    let c = c.map_err(|e| format!("{d}: {e}"))?;
                    bar.inc(c.len() as u64);
                    total.inc(c.len() as u64);
                    done.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                bar.finish_and_clear();
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    total.finish_and_clear();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    failures.extend(results.into_iter().filter_map(Result::err));
    println!(
        "cache-warm: {} image(s), {ok} of {} blob(s) cached, {} bytes transferred or verified; {} failure(s)",
        images.len(),
        work.len(),
        done_bytes.load(Ordering::Relaxed),
        failures.len()
    );
    for f in &failures {
        println!("  failed: {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cache-warm: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match open_store(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cache-warm: {e}");
            return ExitCode::from(2);
        }
    };
    let cache = match build_cache(&cfg, store, Arc::new(NoEvents)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cache-warm: {e}");
            return ExitCode::from(2);
        }
    };
    match args.cmd {
        Cmd::Pull {
            platforms,
            concurrency,
            images,
        } => pull(cache, images, platforms, concurrency).await,
        Cmd::Gc { quota } => {
            let quota = match quota.as_deref().map(|q| parse_size(q).ok_or(q)) {
                None => cfg.quota,
                Some(Ok(q)) => Some(q),
                Some(Err(q)) => {
                    eprintln!("cache-warm: --quota {q:?}: not a size (use e.g. 50GiB)");
                    return ExitCode::from(2);
                }
            };
            match cache.gc(quota).await {
                Ok(r) => {
                    println!(
                        "cache-warm gc: {} expired, {} evicted, {} bytes freed, {} bytes remain, {} in use skipped",
                        r.expired, r.evicted, r.freed_bytes, r.remaining_bytes, r.skipped_in_use
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cache-warm gc: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Scrub => match cache.scrub().await {
            Ok(r) => {
                println!(
                    "cache-warm scrub: {} blob(s), {} bytes checked; {} corrupt and removed",
                    r.checked,
                    r.bytes_checked,
                    r.removed.len()
                );
                for d in &r.removed {
                    println!("  removed: {d}");
                }
                if r.removed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("cache-warm scrub: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
