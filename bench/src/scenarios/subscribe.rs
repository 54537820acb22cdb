//! Subscriber delivery rate with a 5 ms handler, for `pubsub.in-memory` and `pubsub.redis`.
//!
//! The built-in app subscribes (`/dapr/subscribe`) and handles each event in 5 ms. To measure
//! delivery alone, not publishing, the app first holds its handlers at a gate: the benchmark
//! publishes N messages through the sidecar (they queue in the broker and in the sidecar's
//! in-flight slots), then opens the gate and times until the app has handled all N. The
//! ceiling is the in-flight bound divided by the handler time: 64 slots for in-memory
//! (`--app-max-concurrency 64`), 16 for Redis (the component's `concurrency`; Dapr's default
//! is 10), so 12 800 and 3 200 messages/s.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use crate::clients::{self, Http, HttpClient};
use crate::procs::{App, SidecarSpec};
use crate::report::{Measure, Report};
use crate::resources;
use crate::settings::Settings;

const MEMORY_SLOTS: usize = 64;
const REDIS_SLOTS: usize = 16;
const PUBLISHERS: u64 = 8;

async fn app_call(client: &HttpClient, port: u16, path: &str) -> Result<Bytes, String> {
    let method = if path == "/stats" {
        Method::GET
    } else {
        Method::POST
    };
    clients::call(
        client,
        method,
        &clients::uri(port, path),
        Bytes::new(),
        &[],
        200,
    )
    .await
}

async fn count(client: &HttpClient, port: u16) -> Result<u64, String> {
    let body = app_call(client, port, "/stats").await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    v["count"].as_u64().ok_or_else(|| "no count".to_owned())
}

async fn publish(client: &HttpClient, uri: &http::Uri, n: u64) -> Result<(), String> {
    for i in 0..n {
        clients::call(
            client,
            Method::POST,
            uri,
            Bytes::from(format!(r#"{{"n":{i}}}"#)),
            &[("content-type", "application/json")],
            204,
        )
        .await?;
    }
    Ok(())
}

/// Waits until the app's count stops moving for `quiet`.
async fn settle(client: &HttpClient, port: u16, quiet: Duration) -> Result<(), String> {
    let mut last = count(client, port).await?;
    loop {
        tokio::time::sleep(quiet).await;
        let now = count(client, port).await?;
        if now == last {
            return Ok(());
        }
        last = now;
    }
}

/// One pub/sub: returns delivered messages per second.
async fn deliver(
    s: &Settings,
    http_port: u16,
    app_port: u16,
    pubsub: &str,
    topic: &str,
) -> Result<(f64, u64), String> {
    let client = clients::http(Http::H1);
    let uri = clients::uri(http_port, &format!("/v1.0/publish/{pubsub}/{topic}"));
    // Wait until the subscription is live: publish probes until one arrives.
    app_call(&client, app_port, "/gate/open").await?;
    let started = Instant::now();
    while count(&client, app_port).await? == 0 {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{pubsub}: no probe delivered in 30 s"));
        }
        publish(&client, &uri, 1).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&client, app_port, Duration::from_millis(300)).await?;
    app_call(&client, app_port, "/gate/close").await?;
    app_call(&client, app_port, "/reset").await?;
    let total = s.messages.max(PUBLISHERS);
    let per = total / PUBLISHERS;
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let (client, uri) = (client.clone(), uri.clone());
        tasks.push(tokio::spawn(
            async move { publish(&client, &uri, per).await },
        ));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let total = per * PUBLISHERS;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    app_call(&client, app_port, "/gate/open").await?;
    let deadline = Duration::from_secs(120);
    loop {
        let n = count(&client, app_port).await?;
        if n >= total {
            break;
        }
        if t0.elapsed() > deadline {
            return Err(format!(
                "{pubsub}: {n} of {total} messages delivered in {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok((total as f64 / t0.elapsed().as_secs_f64(), total))
}

/// Runs the subscriber-delivery scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    let id = std::process::id();
    let mem_topic = format!("bench-sub-{id}");
    let redis_topic = format!("bench-sub-{id}-redis");
    let subscriptions = serde_json::json!([
        {"pubsubname": "mempubsub", "topic": mem_topic, "route": "/events"},
        {"pubsubname": "redispubsub", "topic": redis_topic, "route": "/events"},
    ])
    .to_string();
    let delay = s.handler_delay.as_millis().to_string();
    let app = App::start(
        0,
        &[
            "--delay-ms".into(),
            delay,
            "--subscribe".into(),
            subscriptions,
        ],
        &s.wrapper(),
    )
    .await?;
    let mut spec = SidecarSpec::new("bench-subscriber")
        .resource("mempubsub.yaml", resources::memory_pubsub("mempubsub"))
        .resource(
            "redispubsub.yaml",
            // Every message is published before the subscriber's gate opens: the stream
            // must hold them all, or trimming would drop some and the count never arrive.
            resources::redis_pubsub(
                "redispubsub",
                &s.redis,
                REDIS_SLOTS,
                (2 * s.messages).max(resources::STREAM_MAX_LEN),
            ),
        );
    spec.app_port = Some(app.port);
    spec.args = vec!["--app-max-concurrency".into(), MEMORY_SLOTS.to_string()];
    spec.wrapper = s.wrapper();
    let sidecar = spec.start(&s.tandem).await?;
    let handler_ms = s.handler_delay.as_secs_f64() * 1000.0;
    let mut failed = Vec::new();
    for (pubsub, kind, topic, slots) in [
        ("mempubsub", "pubsub.in-memory", &mem_topic, MEMORY_SLOTS),
        ("redispubsub", "pubsub.redis", &redis_topic, REDIS_SLOTS),
    ] {
        eprintln!("subscriber delivery {kind}");
        let name = format!("subscriber delivery, {kind}, {handler_ms} ms handler");
        let ceiling = slots as f64 / s.handler_delay.as_secs_f64();
        match deliver(s, sidecar.http, app.port, pubsub, topic).await {
            Ok((rate, total)) => {
                eprintln!("  {rate:.0} msg/s");
                report.measures.push(Measure::new(
                    &name,
                    format!("{rate:.0} msg/s ({:.2} × ceiling)", rate / ceiling),
                    &format!(
                        "{total} messages queued, then released; ceiling {slots} in flight / {handler_ms} ms = {ceiling:.0} msg/s"
                    ),
                ));
            }
            Err(e) => {
                report
                    .measures
                    .push(Measure::new(&name, "ERROR".into(), &e));
                failed.push(e);
            }
        }
    }
    if let Ok(mut conn) = super::state::redis_connection(s).await {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(&redis_topic)
            .query_async(&mut conn)
            .await;
    }
    let log = sidecar.log();
    sidecar.stop().await?;
    drop(app);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; sidecar log:\n{}",
            failed.join("; "),
            super::state::tail(&log, 20)
        ))
    }
}
