//! # benches
//!
//! Criterion benchmarks of the library (`cargo bench -p benches`) and the
//! tools that turn their results into the ratios recorded in
//! `BENCHMARKS.md` (`cargo run -p benches --bin bench-report`).
//!
//! The helpers here build the inputs the benches share, so that every
//! compared pair runs on the same data in the same process.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::RuleSpec;
use cache_upstream::testing::{free_port, require, wait_http};

pub mod floor;

/// The `Content-Length` of an HTTP/1.1 response head, if it has one; an
/// error naming the status line unless the status is 2xx.
pub(crate) fn ok_length(head: &str) -> Result<Option<u64>, String> {
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 2") {
        return Err(format!("answered {status:?}"));
    }
    Ok(head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    }))
}

/// `n` rules shaped like a large organisation's configuration: half exact
/// repositories, half namespace wildcards, spread over several registries.
pub fn rule_specs(n: usize) -> Vec<RuleSpec> {
    (0..n)
        .map(|i| {
            let reg = [
                "docker.io",
                "ghcr.io",
                "quay.io",
                "registry.example.com:5000",
            ][i % 4];
            if i % 2 == 0 {
                RuleSpec::new(
                    format!("exact-{i}"),
                    format!("{reg}/team{i}/service"),
                    format!("team{i}/service"),
                )
            } else {
                RuleSpec::new(
                    format!("ns-{i}"),
                    format!("{reg}/org{i}/*"),
                    format!("mirror/org{i}/*"),
                )
            }
        })
        .collect()
}

/// CPU seconds (user + system) that `getrusage(2)` reports for `who`:
/// `libc::RUSAGE_SELF` for this process, `libc::RUSAGE_THREAD` for the
/// calling thread. NaN if the call fails.
pub fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// CPU time (user + system, all threads) a process has used so far, in
/// seconds; 0 if unreadable. Read before and after a measurement to get the
/// CPU it cost that process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line, so the 12th and 13th after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    (ticks(11) + ticks(12)) / hz
}

/// [`cpu_seconds`] of a process and of its children (nginx's master and
/// its workers, say).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_pid(child) == Some(pid));
    cpu_seconds(pid) + children.map(cpu_seconds).sum::<f64>()
}

/// The parent of process `pid`, if it can be read.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The field after the parenthesised command name and the state.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory (VmHWM) of a process, in KiB; 0 if unreadable.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The CPU model and core count, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Deterministic content of `len` bytes, as 1 MiB `Bytes` chunks.
pub fn chunks(len: usize, chunk: usize) -> Vec<Bytes> {
    let data = cache_core_content(len);
    (0..len)
        .step_by(chunk)
        .map(|i| data.slice(i..(i + chunk).min(len)))
        .collect()
}

fn cache_core_content(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}

/// An upstream serving one synthetic blob of any size without holding it:
/// chunks are zero-copy slices of a small pool whose length is not a
/// multiple of the chunk size, so the content is not trivially periodic.
/// It counts blob GETs. Manifests and tags are not served.
#[derive(Debug)]
pub struct SyntheticUpstream {
    pool: Bytes,
    size: u64,
    chunk: usize,
    digest: cache_core::Digest,
    /// Blob GETs received.
    pub blob_gets: std::sync::atomic::AtomicU64,
}

impl SyntheticUpstream {
    /// A blob of `size` bytes served in chunks of `chunk` bytes.
    pub fn new(size: u64, chunk: usize) -> Self {
        let pool = cache_core_content(1024 * 1024 + 7);
        let mut h = cache_core::Algorithm::Sha256.hasher();
        let mut off = 0u64;
        while off < size {
            let c = Self::slice(&pool, off, chunk, size);
            off += c.len() as u64;
            h.update(&c);
        }
        SyntheticUpstream {
            pool,
            size,
            chunk,
            digest: h.finish(),
            blob_gets: Default::default(),
        }
    }

    fn slice(pool: &Bytes, off: u64, chunk: usize, size: u64) -> Bytes {
        let p = (off % pool.len() as u64) as usize;
        let len = chunk.min(pool.len() - p).min((size - off) as usize);
        pool.slice(p..p + len)
    }

    /// The blob's digest.
    pub fn digest(&self) -> &cache_core::Digest {
        &self.digest
    }

    /// The blob as a stream of chunks, as the upstream would send it.
    pub fn stream(&self, start: u64) -> cache_core::ByteStream {
        use futures::StreamExt;
        let (pool, chunk, size) = (self.pool.clone(), self.chunk, self.size);
        futures::stream::unfold(start, move |off| {
            let pool = pool.clone();
            async move {
                if off >= size {
                    return None;
                }
                let c = Self::slice(&pool, off, chunk, size);
                let next = off + c.len() as u64;
                Some((Ok(c), next))
            }
        })
        .boxed()
    }
}

fn unsupported<T>() -> cache_core::Result<T> {
    Err(cache_core::Error::Unsupported {
        what: "SyntheticUpstream serves one blob only".into(),
    })
}

#[async_trait::async_trait]
impl cache_core::Upstream for SyntheticUpstream {
    async fn manifest(
        &self,
        _: &cache_core::RepoName,
        _: &cache_core::Reference,
        _: &[&str],
    ) -> cache_core::Result<cache_core::Manifest> {
        unsupported()
    }

    async fn head_manifest(
        &self,
        _: &cache_core::RepoName,
        _: &cache_core::Reference,
        _: &[&str],
    ) -> cache_core::Result<cache_core::ManifestHead> {
        unsupported()
    }

    async fn blob(
        &self,
        _: &cache_core::RepoName,
        digest: &cache_core::Digest,
        range: Option<cache_core::ByteRange>,
    ) -> cache_core::Result<cache_core::UpstreamBlob> {
        self.blob_gets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if *digest != self.digest {
            return Err(cache_core::Error::blob_unknown(digest));
        }
        let span = match range {
            Some(r) => r.resolve(self.size)?,
            None => 0..self.size,
        };
        Ok(cache_core::UpstreamBlob {
            size: self.size,
            range: span.clone(),
            stream: self.stream(span.start),
        })
    }

    async fn head_blob(
        &self,
        _: &cache_core::RepoName,
        _: &cache_core::Digest,
    ) -> cache_core::Result<u64> {
        Ok(self.size)
    }

    async fn tags(
        &self,
        _: &cache_core::RepoName,
        _: &cache_core::TagPage,
    ) -> cache_core::Result<Vec<cache_core::Tag>> {
        unsupported()
    }
}

/// A cache with one rule (`bench/*` on `synthetic.example`) over `store`
/// and `upstream`, on the current tokio runtime.
pub fn engine(
    store: std::sync::Arc<dyn cache_core::BlobStore>,
    upstream: std::sync::Arc<SyntheticUpstream>,
) -> cache_core::PullThroughCache {
    cache_core::PullThroughCache::builder()
        .rule(RuleSpec::new(
            "bench",
            "synthetic.example/bench/*",
            "bench/*",
        ))
        .store(store)
        .tokio()
        .upstream("synthetic.example", upstream)
        .build()
        .expect("every rule has its upstream")
}

/// Reads a blob through `cache` as repository `bench/app` and returns its length.
pub async fn pull(cache: &cache_core::PullThroughCache, d: &cache_core::Digest) -> u64 {
    use futures::StreamExt;
    let repo = cache_core::RepoName::parse("bench/app").expect("static name");
    let r = cache.blob(&repo, d, None).await.expect("blob request");
    let mut s = r.body.into_stream();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        n += c.expect("blob bytes").len() as u64;
    }
    n
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its working directory, removed with it.
    pub _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: a master process (nginx's) then stops its workers,
        // which a SIGKILL of the master would leave running.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of `v` (the upper one for an even count); `v` is sorted.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// nginx serving the files of `root` on a free loopback port, as it is
/// deployed: a master process and one worker per core (two here),
/// `sendfile` and `tcp_nopush`, keep-alive, no access log (see
/// [`nginx_with`] for one).
pub fn nginx(root: &Path) -> Result<(Proc, u16), String> {
    nginx_with(root, false)
}

/// [`nginx`], with its access log written to a file when `access_log`
/// (nginx's default; the comparison for a server that logs each request).
pub fn nginx_with(root: &Path, access_log: bool) -> Result<(Proc, u16), String> {
    let bin = require("nginx", "nginx-light")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let conf = format!(
        "daemon off;\nworker_processes {w};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log {log};\n  sendfile on;\n  tcp_nopush on;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    listen 127.0.0.1:{port};\n    root {r};\n  }}\n}}\n",
        d = dir.path().display(),
        r = root.display(),
        w = std::thread::available_parallelism().map_or(2, |n| n.get()),
        log = if access_log {
            format!("{}/access.log", dir.path().display())
        } else {
            "off".to_owned()
        },
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e}"))?;
    let mut p = Proc { child, _dir: dir };
    wait_http(port, "/", Some(&mut p.child)).map_err(|e| format!("nginx: {e}"))?;
    Ok((p, port))
}

/// A closed-loop HTTP/1.1 load of `conns` kept-alive connections for
/// `secs` seconds against `url` (`http://host:port/path`), for what `wrk`
/// cannot do (`HEAD`: it waits for a body that never comes). Returns
/// requests per second and the 99th-percentile latency in ms; an answer
/// other than 2xx is an error.
pub fn load(url: &str, method: &str, conns: usize, secs: u64) -> Result<(f64, f64), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("http:// URLs only")?;
    let (host, path) = rest.split_once('/').ok_or("no path")?;
    let request = format!("{method} /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let head = method == "HEAD";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (host, request) = (host.to_owned(), request.clone());
            tasks.push(tokio::spawn(async move {
                let connect = || async {
                    let s = tokio::net::TcpStream::connect(&host)
                        .await
                        .map_err(|e| e.to_string())?;
                    s.set_nodelay(true).map_err(|e| e.to_string())?;
                    Ok::<_, String>(s)
                };
                let mut s = connect().await?;
                let mut lat = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut retried = false;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if s.write_all(request.as_bytes()).await.is_err() && !retried {
                        // A kept-alive connection the server ended: start over.
                        retried = true;
                        s = connect().await?;
                        continue;
                    }
                    let mut got: Vec<u8> = Vec::new();
                    let body_start = loop {
                        let n = match s.read(&mut buf).await {
                            Ok(n) => n,
                            Err(_) if got.is_empty() && !retried => 0,
                            Err(e) => return Err(e.to_string()),
                        };
                        if n == 0 && got.is_empty() {
                            break 0;
                        }
                        if n == 0 {
                            return Err("connection closed mid-answer".to_owned());
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    if body_start == 0 {
                        // The server ended the kept-alive connection (as nginx
                        // does after 1000 requests): reconnect and ask again.
                        retried = true;
                        s = connect().await?;
                        continue;
                    }
                    retried = false;
                    let head_text = String::from_utf8_lossy(&got[..body_start]);
                    let len = ok_length(&head_text)?.unwrap_or(0) as usize;
                    let mut have = got.len() - body_start;
                    while !head && have < len {
                        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("short body".to_owned());
                        }
                        have += n;
                    }
                    lat.push(t.elapsed());
                }
                Ok::<_, String>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(all)
    })?;
    let mut lat = results;
    if lat.is_empty() {
        return Err("no request completed".into());
    }
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    Ok((lat.len() as f64 / secs as f64, p99))
}

#[cfg(test)]
mod tests {
    use super::ok_length;

    #[test]
    fn a_response_head_gives_its_length_or_its_status_line() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: x\r\nContent-Length: 42";
        assert_eq!(ok_length(ok), Ok(Some(42)));
        assert_eq!(ok_length("HTTP/1.1 204 No Content"), Ok(None));
        let err = ok_length("HTTP/1.1 404 Not Found\r\nContent-Length: 3").unwrap_err();
        assert!(err.contains("404 Not Found"), "{err}");
    }
}
