//! `tandem-bench`: measures a state GET through a running Tandem sidecar and the same read sent
//! directly to the backend, in one run, and prints latency percentiles and ratios.
//!
//! Open loop: requests are scheduled at a fixed rate and each latency is measured from its
//! scheduled start, so a slow response cannot hide the ones queued behind it (no coordinated
//! omission). Closed loop: a fixed number of workers send back to back, for throughput.
//!
//! ```text
//! tandem-bench --sidecar 127.0.0.1:3500 --store redisstore --key bench-key \
//!     --direct redis://127.0.0.1:6379 --direct-key 'bench||bench-key' --rate 1000 --seconds 10
//! ```
//! `--direct` is `redis://host:port` (HGETALL, what `state.redis` runs) or a PostgreSQL
//! connection string prefixed `postgres:` (the `state.postgresql` v1 read).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One direct request to the backend.
type DirectOp = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

struct Args {
    sidecar: String,
    store: String,
    key: String,
    direct: String,
    direct_key: String,
    table: String,
    rate: u64,
    seconds: u64,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sidecar: "127.0.0.1:3500".into(),
        store: "statestore".into(),
        key: "bench-key".into(),
        direct: String::new(),
        direct_key: String::new(),
        table: "state".into(),
        rate: 1000,
        seconds: 10,
        workers: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sidecar" => a.sidecar = val()?,
            "--store" => a.store = val()?,
            "--key" => a.key = val()?,
            "--direct" => a.direct = val()?,
            "--direct-key" => a.direct_key = val()?,
            "--table" => a.table = val()?,
            "--rate" => a.rate = val()?.parse().map_err(|_| "--rate takes a number")?,
            "--seconds" => a.seconds = val()?.parse().map_err(|_| "--seconds takes a number")?,
            "--workers" => a.workers = val()?.parse().map_err(|_| "--workers takes a number")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.direct.is_empty() {
        return Err("--direct is required".into());
    }
    Ok(a)
}

/// Latency percentiles (µs) of an open-loop run; panics on any failed request.
async fn open_loop<F, Fut>(rate: u64, seconds: u64, op: F) -> Histogram<u64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = tokio::time::Instant::now();
    let total = rate * seconds;
    for i in 0..total {
        let at = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at).await;
        let op = op.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = op().await {
                panic!("request failed: {e}");
            }
            let _ = tx.send(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
        });
    }
    drop(tx);
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    while let Some(us) = rx.recv().await {
        let _ = h.record(us.max(1));
    }
    h
}

/// Operations per second with `workers` back-to-back loops for `seconds`.
async fn closed_loop<F, Fut>(workers: usize, seconds: u64, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                op().await.expect("request failed");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / seconds as f64
}

fn row(name: &str, h: &Histogram<u64>) -> [f64; 4] {
    let p = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let v = [p(0.5), p(0.9), p(0.99), p(0.999)];
    println!(
        "{name:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3}   (n={})",
        v[0],
        v[1],
        v[2],
        v[3],
        h.len()
    );
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            std::process::exit(2);
        }
    };
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url: hyper::Uri = format!(
        "http://{}/v1.0/state/{}/{}",
        args.sidecar, args.store, args.key
    )
    .parse()
    .expect("sidecar URL");
    let via = {
        let http = http.clone();
        let url = url.clone();
        move || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let resp = http.get(url).await.map_err(|e| e.to_string())?;
                if resp.status() != 200 {
                    return Err(format!("status {}", resp.status()));
                }
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
        }
    };

    let direct: DirectOp = if let Some(conn) = args.direct.strip_prefix("postgres:") {
        let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        let stmt = client
                .prepare(&format!("SELECT value, xmin::text FROM {} WHERE key = $1 AND (expiredate IS NULL OR expiredate > now())", args.table))
                .await
                .expect("prepare");
        let client = Arc::new(client);
        let key = args.direct_key.clone();
        Arc::new(move || {
            let client = client.clone();
            let stmt = stmt.clone();
            let key = key.clone();
            Box::pin(async move {
                let rows = client
                    .query(&stmt, &[&key])
                    .await
                    .map_err(|e| e.to_string())?;
                if rows.is_empty() {
                    Err("no row".into())
                } else {
                    Ok(())
                }
            })
        })
    } else {
        let client = redis::Client::open(args.direct.as_str()).expect("redis URL");
        let conn = client
            .get_connection_manager()
            .await
            .expect("connect to Redis");
        let key = args.direct_key.clone();
        Arc::new(move || {
            let mut conn = conn.clone();
            let key = key.clone();
            Box::pin(async move {
                let v: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if v.is_empty() {
                    Err("no value".into())
                } else {
                    Ok(())
                }
            })
        })
    };

    // Warm up both paths.
    for _ in 0..200 {
        via().await.expect("sidecar warm-up");
        direct().await.expect("direct warm-up");
    }
    println!(
        "open loop at {} req/s for {} s each (latency in ms)",
        args.rate, args.seconds
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "path", "p50", "p90", "p99", "p99.9"
    );
    let d = direct.clone();
    let hd = open_loop(args.rate, args.seconds, move || d()).await;
    let hv = open_loop(args.rate, args.seconds, via.clone()).await;
    let rd = row("direct", &hd);
    let rv = row("via tandem (HTTP)", &hv);
    println!(
        "{:<28} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        "ratio (tandem / direct)",
        rv[0] / rd[0],
        rv[1] / rd[1],
        rv[2] / rd[2],
        rv[3] / rd[3]
    );
    let d = direct.clone();
    let td = closed_loop(args.workers, args.seconds, move || d()).await;
    let tv = closed_loop(args.workers, args.seconds, via).await;
    println!(
        "closed loop, {} workers: direct {:.0} req/s, via tandem {:.0} req/s, ratio {:.2}",
        args.workers,
        td,
        tv,
        tv / td
    );
}
