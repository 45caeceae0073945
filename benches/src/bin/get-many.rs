//! `get-many N URL`: N GETs of one URL at once from one process, with
//! reqwest on a multi-threaded tokio runtime (one worker per core), as
//! `e2e-compare`'s clients are. Prints one line per GET, as curl's
//! `-w '%{time_starttransfer} %{time_total} %{size_download}'` would:
//! seconds to the response head, seconds to the last byte, bytes.
//! `scripts/bench-cold-ab.sh` and `scripts/bench-warm-ab.sh` use it with
//! `CLIENT=reqwest`. Each GET gives up after 60 s.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;

async fn get(client: reqwest::Client, url: String) -> Result<(f64, f64, u64), String> {
    let t = Instant::now();
    let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("GET {url}: {}", r.status()));
    }
    let head = t.elapsed().as_secs_f64();
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        n += c.map_err(|e| e.to_string())?.len() as u64;
    }
    Ok((head, t.elapsed().as_secs_f64(), n))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, url) = match &args[..] {
        [n, url] => match n.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => (n, url.clone()),
            _ => {
                eprintln!("get-many: N must be from 1 to 1024, got {n:?}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: get-many N URL");
            return ExitCode::FAILURE;
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("get-many: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(get(client.clone(), url.clone())))
        .collect();
    let mut failed = false;
    for task in tasks {
        match task.await {
            Ok(Ok((head, total, bytes))) => println!("{head:.6} {total:.6} {bytes}"),
            Ok(Err(e)) => {
                eprintln!("get-many: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("get-many: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
