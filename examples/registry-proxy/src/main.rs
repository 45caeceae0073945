//! `registry-proxy`: serves the pull side of the OCI Distribution API for
//! the repositories its caching rules declare, fetching each image from its
//! upstream once, verified, and serving it from the cache afterwards; and
//! the tools that go with it (`warm`, `gc`, `scrub`, `purge`, `sync`,
//! `check`, `explain`, `reload`, `scan`, `verify`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry_proxy::cli;
use registry_proxy::config::{Config, DEFAULT_CONFIG};

/// An OCI pull-through registry cache.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file. Without it, `registry-proxy.toml` in the
    /// working directory if present, else the built-in default (listen on
    /// 127.0.0.1:5000, store in ./cache-data, Docker Hub official images
    /// under library/*).
    #[arg(long, short, global = true, env = "REGISTRY_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// The same as the `check` subcommand.
    #[arg(long, hide = true)]
    check: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the pull API (what runs without a subcommand).
    Serve,
    /// Validate the configuration and exit.
    Check,
    /// Ask the running server to re-read its configuration (through
    /// server.admin_listen; SIGHUP does the same).
    Reload,
    /// Ask the running server (through server.admin_listen) to scan an
    /// image with its rule's vulnerability scanner now, and print the
    /// findings. IMAGE is a local name: library/nginx:1.27 or
    /// library/nginx@sha256:... Exits 1 when the policy denies it.
    Scan {
        /// The image.
        image: String,
    },
    /// Print every signature and attestation of an image (per platform of
    /// an index), what verified it or why it failed, as its rule's
    /// signature policy judges them now. IMAGE is a local name
    /// (acme/app:1.2, acme/app@sha256:...). Exits 1 when the policy
    /// refuses it. Opens no store: runs beside the server.
    Verify {
        /// The image.
        image: String,
    },
    /// Ask the running server (through server.admin_listen) to run RULE's
    /// sync now, or every rule's that has a [rule.sync]; prints what each
    /// run did. Exits 1 when a run had errors.
    Sync {
        /// The rule (default: every rule with a sync policy).
        rule: Option<String>,
    },
    /// Say which rule and upstream a repository maps to, or why none does.
    /// NAME is a local repository (library/nginx) or an upstream one
    /// (docker.io/library/nginx).
    Explain {
        /// The repository.
        name: String,
    },
    /// Pull images (upstream references, e.g. docker.io/library/nginx:1.27)
    /// into the store through the caching rules, so their first pull is
    /// all hits. On a filesystem store, stop the server first.
    Warm {
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
    /// Drop the cache's records of a repository, a tag or a manifest:
    /// IMAGE is library/nginx (the whole repository), library/nginx:1.27
    /// or library/nginx@sha256:... Its next pull is a miss; blobs nothing
    /// else holds go at the next gc. Through the running server when
    /// server.admin_listen is set, else on the store directly.
    Purge {
        /// The repository, tag or manifest.
        image: String,
    },
}

/// The configuration file the flags name, or the default one.
fn config_path(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone().or_else(|| {
        let p = PathBuf::from("registry-proxy.toml");
        p.is_file().then_some(p)
    })
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            Config::parse(DEFAULT_CONFIG, &cwd).map_err(|e| e.to_string())
        }
    }
}

use registry_proxy::logging::LogFormat;

fn main() -> ExitCode {
    // Blob I/O runs on tokio's blocking threads; glibc would give each its
    // own malloc arena, and peak RSS would grow with the thread count rather
    // than with anything the server holds. Two arenas keep it flat.
    //
    // A cold miss allocates a receive buffer of a few hundred KiB per piece
    // of the upstream's body and frees it once the piece is written and
    // sent. glibc's adaptive thresholds hand those to mmap or give the
    // freed heap back, so every piece faults fresh pages in again: about
    // 20,000 page faults per 256 MiB blob. Fixed thresholds (pieces up to
    // 4 MiB from the heap, at most 4 MiB of free heap kept per arena) cut
    // that to 5,000 to 13,000 and the proxy's CPU for the miss by about
    // 10% (BENCHMARKS.md). A GLIBC_TUNABLES setting of the operator's wins.
    // This has to happen before the runtime starts its threads.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        let tuned = std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."));
        if !tuned {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        }
    }
    let args = Args::parse();
    let cmd = match (args.cmd, args.check) {
        (None, true) => Cmd::Check,
        (None, false) => Cmd::Serve,
        (Some(c), _) => c,
    };
    let path = config_path(&args.config);
    if let Cmd::Reload = cmd {
        let _log = registry_proxy::logging::init(false, LogFormat::Text);
        // The server validates the file and reports; only its address is read here.
        return cli::reload(path.as_deref());
    }
    if let Cmd::Scan { image } = &cmd {
        let _log = registry_proxy::logging::init(false, LogFormat::Text);
        return cli::scan(path.as_deref(), image);
    }
    if let Cmd::Sync { rule } = &cmd {
        let _log = registry_proxy::logging::init(false, LogFormat::Text);
        return cli::sync(path.as_deref(), rule.as_deref());
    }
    let cfg = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = registry_proxy::logging::init(matches!(cmd, Cmd::Serve), cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cmd {
            Cmd::Serve => registry_proxy::server::serve(cfg, path).await,
            Cmd::Check => cli::check(&cfg),
            Cmd::Reload | Cmd::Scan { .. } | Cmd::Sync { .. } => unreachable!("answered above"),
            Cmd::Explain { name } => cli::explain(&cfg, &name),
            Cmd::Verify { image } => cli::verify(&cfg, &image).await,
            Cmd::Warm {
                platforms,
                concurrency,
                images,
            } => cli::warm(&cfg, &images, &platforms, concurrency).await,
            Cmd::Gc { quota } => cli::gc(&cfg, quota.as_deref()).await,
            Cmd::Scrub => cli::scrub(&cfg).await,
            Cmd::Purge { image } => cli::purge(&cfg, path.as_deref(), &image).await,
        }
    })
}
