use futures::StreamExt;
use std::time::Instant;
async fn get(client: reqwest::Client, url: String) -> u64 {
    let r = client.get(&url).send().await.unwrap();
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        n += c.unwrap().len() as u64;
    }
    n
}
#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a[0] == "conc" {
        let n: usize = a[1].parse().unwrap();
        let client = reqwest::Client::new();
        let t = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(get(client.clone(), a[2].clone())))
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 268435456);
        }
        println!("conc {} s", t.elapsed().as_secs_f64());
        return;
    }
    let rounds: usize = a[0].parse().unwrap();
    let client = reqwest::Client::new();
    for _ in 0..rounds {
        for pair in a[1..].iter() {
            let (name, url) = pair.split_once('=').unwrap();
            let t = Instant::now();
            let n = get(client.clone(), url.to_owned()).await;
            println!("{name} {} {n}", t.elapsed().as_secs_f64());
        }
    }
}
