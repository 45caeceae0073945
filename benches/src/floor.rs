//! The cold path's CPU floor, measured: the least work a verifying,
//! storing proxy must do for one cold blob GET, done by the plainest
//! program that does it.
//!
//! One thread accepts one client, asks the upstream for the blob over a
//! raw HTTP/1.1 socket, and for each read of the upstream's body hashes
//! the bytes (SHA-256), writes them to a new file (allocated up front)
//! and sends them to the client; then it checks the digest, fsyncs the
//! file, renames it into place and fsyncs the directory. No HTTP
//! framework, no runtime, no hand-offs between threads, no bounds or
//! checks besides the digest: everything a real proxy does beyond this
//! is above the floor. `e2e-compare` runs it in a child process of its
//! own and compares the CPU this takes with our proxy's for the same GET.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How much one read of the upstream's body asks for.
const READ: usize = 256 * 1024;
/// Socket timeouts: a stuck peer ends the run with an error, not a hang.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one floor run cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloorRun {
    /// From accepting the client to its last byte sent.
    pub wall: f64,
    /// CPU seconds (user + system) until the last byte was sent and the
    /// digest checked.
    pub served_cpu: f64,
    /// CPU seconds until the file was durable: fsync, rename, directory fsync.
    pub stored_cpu: f64,
}

impl FloorRun {
    /// One line for a parent process to read back: the three figures.
    pub fn to_line(self) -> String {
        format!("{} {} {}", self.wall, self.served_cpu, self.stored_cpu)
    }

    /// Parses [`FloorRun::to_line`]'s output.
    pub fn from_line(line: &str) -> Result<Self, String> {
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|s| s.parse::<f64>().map_err(|e| format!("{line:?}: {e}")))
            .collect::<Result<_, _>>()?;
        match v[..] {
            [wall, served_cpu, stored_cpu] => Ok(Self {
                wall,
                served_cpu,
                stored_cpu,
            }),
            _ => Err(format!("expected three figures, got {line:?}")),
        }
    }
}

/// This process's CPU seconds so far (user + system, all threads).
fn own_cpu() -> f64 {
    crate::rusage_cpu(libc::RUSAGE_SELF)
}

/// Reads an HTTP head (at most 16 KiB) from `s`; returns it and whatever
/// of the body came with it.
fn read_head(s: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(4096);
    let mut piece = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err("HTTP head over 16 KiB".into());
        }
        let n = s.read(&mut piece).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed inside an HTTP head".into());
        }
        buf.extend_from_slice(&piece[..n]);
    }
}

/// Serves one client on `listener`: the blob at `upstream` (`host:port`)
/// and `path` (`/v2/<repo>/blobs/sha256:<hex>`), stored under `dir`.
pub fn serve_one(
    listener: &TcpListener,
    upstream: &str,
    path: &str,
    dir: &Path,
) -> Result<FloorRun, String> {
    let hex = path
        .rsplit_once("sha256:")
        .map(|(_, h)| h.to_owned())
        .ok_or_else(|| format!("{path}: no sha256 digest"))?;
    let (mut client, _) = listener.accept().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let cpu0 = own_cpu();
    client
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    client
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    read_head(&mut client)?;

    let mut up = TcpStream::connect(upstream).map_err(|e| format!("{upstream}: {e}"))?;
    up.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        up,
        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let (head, first) = read_head(&mut up)?;
    let size = crate::ok_length(&head)
        .map_err(|e| format!("upstream {e}"))?
        .ok_or("upstream sent no Content-Length")?;

    let staged = dir.join(format!("{hex}.partial"));
    let mut file = std::fs::File::create(&staged).map_err(|e| e.to_string())?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate only reads its integer arguments. Allocating
        // the whole file first is the cheapest way to write it here.
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, size as i64) };
    }
    write!(
        client,
        "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;

    let mut hash = Sha256::new();
    let mut buf = vec![0u8; READ];
    let mut done = 0u64;
    let mut pass = |bytes: &[u8]| -> Result<(), String> {
        hash.update(bytes);
        file.write_all(bytes).map_err(|e| e.to_string())?;
        client.write_all(bytes).map_err(|e| e.to_string())
    };
    let take = first.len().min(size as usize);
    pass(&first[..take])?;
    done += take as u64;
    while done < size {
        let want = READ.min((size - done) as usize);
        let n = up.read(&mut buf[..want]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("upstream closed at {done} of {size} bytes"));
        }
        pass(&buf[..n])?;
        done += n as u64;
    }
    let got = hash
        .finalize()
        .iter()
        .fold(String::new(), |s, b| s + &format!("{b:02x}"));
    if got != hex {
        return Err(format!("digest mismatch: sha256:{got}"));
    }
    let wall = t.elapsed().as_secs_f64();
    let served_cpu = own_cpu() - cpu0;

    file.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&staged, dir.join(&hex)).map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(FloorRun {
        wall,
        served_cpu,
        stored_cpu: own_cpu() - cpu0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_run_survives_its_line() {
        let r = FloorRun {
            wall: 0.25,
            served_cpu: 0.125,
            stored_cpu: 0.5,
        };
        assert_eq!(FloorRun::from_line(&r.to_line()), Ok(r));
        assert!(FloorRun::from_line("1 2").is_err());
        assert!(FloorRun::from_line("1 x 2").is_err());
    }

    /// Passes `sent` through the floor for a GET of the blob `blob`:
    /// an upstream thread serving `sent`, a client reading through the
    /// floor. Returns the run, the client's body and the store's directory.
    fn pass_through(
        blob: &[u8],
        sent: Vec<u8>,
    ) -> (Result<FloorRun, String>, Vec<u8>, tempfile::TempDir, String) {
        let hex = Sha256::digest(blob)
            .iter()
            .fold(String::new(), |s, b| s + &format!("{b:02x}"));
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = up.local_addr().unwrap().to_string();
        let body = sent;
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = up.accept().unwrap();
            read_head(&mut s).unwrap();
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(&body).unwrap();
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = format!("/v2/r/blobs/sha256:{hex}");
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(front_addr).unwrap();
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let run = serve_one(&front, &up_addr, &path, dir.path());
        let all = client.join().unwrap();
        upstream.join().unwrap();
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (run, all[at..].to_vec(), dir, hex)
    }

    fn blob() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The floor serves the right bytes and stores them.
    #[test]
    fn the_floor_passes_a_blob_through_and_stores_it() {
        let blob = blob();
        let (run, body, dir, hex) = pass_through(&blob, blob.clone());
        let run = run.unwrap();
        assert_eq!(body, blob);
        assert_eq!(std::fs::read(dir.path().join(&hex)).unwrap(), blob);
        assert!(run.stored_cpu >= run.served_cpu && run.wall > 0.0);
    }

    /// The floor checks the digest too: a flipped byte is an error and
    /// stores nothing under the blob's name.
    #[test]
    fn the_floor_refuses_a_flipped_byte() {
        let blob = blob();
        let mut sent = blob.clone();
        sent[1_234_567] ^= 1;
        let (run, _, dir, hex) = pass_through(&blob, sent);
        assert!(run.unwrap_err().contains("digest mismatch"));
        assert!(!dir.path().join(&hex).exists());
    }
}
