//! `send-paths`: what one byte of a stored blob costs to send over
//! loopback, by the three ways a server can send it: `sendfile(2)` from
//! the file (what warm blobs and readers behind a miss's window use),
//! `write(2)` from memory (a miss's window), and `pread(2)` into a
//! buffer then `write(2)` (what readers behind the window did before).
//!
//! One 256 MiB file in the page cache is sent four times per round to a
//! receiver thread on a loopback connection; each side's CPU is its own
//! thread's (`RUSAGE_THREAD`: user + system, including the loopback's
//! receive processing, which the kernel runs in the sender's context).
//! The three ways alternate round by round, so the noise of a shared
//! machine falls on all of them alike. Prints the medians and each way's
//! total CPU against sendfile's.
//!
//! `ROUNDS` (default 5) sets the rounds; every socket gives up after
//! 30 s. Loopback only.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The file's size.
const SIZE: usize = 256 << 20;
/// Times the file is sent per round.
const REPS: usize = 4;
/// What one `sendfile` call covers (the server's `CHUNK`).
const SPAN: usize = 4 << 20;
/// What one `write` from memory covers (about what hyper writes at once).
const WRITE: usize = 512 << 10;
/// The buffer `pread` fills (the engine's `read_chunk`).
const PREAD: usize = 256 << 10;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    Sendfile,
    Write,
    PreadWrite,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Sendfile => "sendfile from the file",
            Way::Write => "write from memory",
            Way::PreadWrite => "pread, then write",
        }
    }
}

/// The calling thread's CPU seconds (user + system).
fn thread_cpu() -> f64 {
    benches::rusage_cpu(libc::RUSAGE_THREAD)
}

/// Sends all of `file` (or `mem`, its bytes) `REPS` times on `s` the given way.
fn send(way: Way, s: &mut TcpStream, file: &File, mem: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; PREAD];
    for _ in 0..REPS {
        let mut off = 0usize;
        while off < SIZE {
            match way {
                Way::Sendfile => {
                    let mut o = off as libc::off_t;
                    let n = (SIZE - off).min(SPAN);
                    // SAFETY: both descriptors are open for the call's length.
                    let r = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut o, n) };
                    if r <= 0 {
                        return Err(format!("sendfile: {}", std::io::Error::last_os_error()));
                    }
                    off += r as usize;
                }
                Way::Write => {
                    let end = (off + WRITE).min(SIZE);
                    s.write_all(&mem[off..end]).map_err(|e| e.to_string())?;
                    off = end;
                }
                Way::PreadWrite => {
                    let n = (SIZE - off).min(PREAD);
                    file.read_exact_at(&mut buf[..n], off as u64)
                        .map_err(|e| e.to_string())?;
                    s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                    off += n;
                }
            }
        }
    }
    Ok(())
}

/// One round of one way: (sender CPU, receiver CPU, wall seconds).
fn round(way: Way, file: &File, mem: &[u8]) -> Result<(f64, f64, f64), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let receiver = std::thread::spawn(move || -> Result<f64, String> {
        let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let cpu = thread_cpu();
        let mut got = 0usize;
        while got < SIZE * REPS {
            match c.read(&mut buf).map_err(|e| e.to_string())? {
                0 => return Err(format!("the connection ended after {got} bytes")),
                n => got += n,
            }
        }
        Ok(thread_cpu() - cpu)
    });
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let (t, cpu) = (Instant::now(), thread_cpu());
    send(way, &mut s, file, mem)?;
    let sender = thread_cpu() - cpu;
    let received = receiver.join().map_err(|_| "the receiver panicked")??;
    Ok((sender, received, t.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("send-paths: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let rounds: usize = match std::env::var("ROUNDS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("ROUNDS={v:?}: not a count"))?,
        Err(_) => 5,
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("blob");
    let mem = benches::chunks(SIZE, SIZE).concat();
    std::fs::write(&path, &mem).map_err(|e| e.to_string())?;
    let file = File::open(&path).map_err(|e| e.to_string())?;
    // Into the page cache before the first round.
    std::io::copy(&mut &file, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let ways = [Way::Sendfile, Way::Write, Way::PreadWrite];
    let mut runs: Vec<[Vec<f64>; 3]> = ways.iter().map(|_| Default::default()).collect();
    for _ in 0..rounds {
        for (i, &way) in ways.iter().enumerate() {
            let (snd, rcv, wall) = round(way, &file, &mem)?;
            runs[i][0].push(snd);
            runs[i][1].push(rcv);
            runs[i][2].push(wall);
        }
    }
    println!(
        "{} MiB sent {REPS} times per round over loopback, medians of {rounds} rounds, on {}:\n",
        SIZE >> 20,
        benches::machine()
    );
    println!("| way | sender CPU | receiver CPU | both | wall | both / sendfile's |");
    println!("|---|---|---|---|---|---|");
    let med: Vec<[f64; 3]> = runs
        .iter_mut()
        .map(|r| r.each_mut().map(|v| benches::median(v)))
        .collect();
    let base = med[0][0] + med[0][1];
    for (way, [snd, rcv, wall]) in ways.iter().zip(&med) {
        println!(
            "| {} | {snd:.3} s | {rcv:.3} s | {:.3} s | {wall:.3} s | {:.2}x |",
            way.name(),
            snd + rcv,
            (snd + rcv) / base
        );
    }
    Ok(())
}
