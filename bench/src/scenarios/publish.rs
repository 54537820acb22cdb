//! Publish: `POST /v1.0/publish/{pubsub}/{topic}` through the sidecar against a direct
//! `XADD` to Redis Streams of what `pubsub.redis` writes: the CloudEvent envelope as `data`
//! and its `contentType`, trimmed with `MAXLEN ~ 10000` like the component here
//! (`maxLenApprox: 10000`). `pubsub.in-memory` is measured too, absolute (no subscriber,
//! so it shows the cost of the API path itself).

use bytes::Bytes;
use std::sync::Arc;

use super::Paths;
use super::state::redis_connection;
use crate::load::{Op, op};
use crate::procs::SidecarSpec;
use crate::report::Report;
use crate::resources;
use crate::settings::Settings;

/// The JSON body published: `{"payload":"abc…"}` of about `n` bytes.
pub fn body(n: usize) -> Bytes {
    let filler: String = (0..n.saturating_sub(14))
        .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz"[i % 26]))
        .collect();
    Bytes::from(format!(r#"{{"payload":"{filler}"}}"#))
}

/// A CloudEvent envelope like the sidecar's, around `data`.
fn envelope(data: &[u8], topic: &str) -> Vec<u8> {
    let data = String::from_utf8_lossy(data);
    format!(
        r#"{{"specversion":"1.0","id":"5929aaac-a5e2-4ca1-859c-edfe73f11565","source":"bench","type":"com.dapr.event.sent","datacontenttype":"application/json","topic":"{topic}","pubsubname":"redispubsub","traceid":"00-00000000000000000000000000000000-0000000000000000-00","traceparent":"00-00000000000000000000000000000000-0000000000000000-00","tracestate":"","time":"2026-01-01T00:00:00Z","data":{data}}}"#
    )
    .into_bytes()
}

/// Publishing through the sidecar.
pub fn via(http_port: u16, pubsub: &str, topic: &str, body: Bytes) -> Op {
    let client = crate::raw::H1::new(http_port);
    let req: Arc<[u8]> = client
        .request(
            "POST",
            &format!("/v1.0/publish/{pubsub}/{topic}"),
            &[("content-type", "application/json")],
            &body,
        )
        .into();
    op(move || {
        let (client, req) = (client.clone(), req.clone());
        async move { client.call(&req, 204).await.map(drop) }
    })
}

/// Runs the publish scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    let mut spec = SidecarSpec::new("bench-publisher")
        .resource(
            "redispubsub.yaml",
            resources::redis_pubsub("redispubsub", &s.redis, 10, resources::STREAM_MAX_LEN),
        )
        .resource("mempubsub.yaml", resources::memory_pubsub("mempubsub"));
    spec.wrapper = s.wrapper();
    let sidecar = spec.start(&s.tandem).await?;
    let topic = format!("bench-publish-{}", std::process::id());
    let direct_topic = format!("{topic}-direct");
    let body = body(s.payload);
    let mut failed = Vec::new();

    let scenario = format!("publish redis, {} B", s.payload);
    eprintln!("{scenario}");
    let conn = redis_connection(s).await?;
    let entry = Bytes::from(envelope(&body, &direct_topic));
    let direct_op = {
        let (conn, topic, entry) = (conn.clone(), direct_topic.clone(), entry);
        op(move || {
            let (mut conn, topic, entry) = (conn.clone(), topic.clone(), entry.clone());
            async move {
                let _id: String = redis::cmd("XADD")
                    .arg(&topic)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(resources::STREAM_MAX_LEN)
                    .arg("*")
                    .arg("data")
                    .arg(entry.as_ref())
                    .arg("contentType")
                    .arg("application/cloudevents+json")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
        })
    };
    let mut paths = Paths::new(&report.paths);
    let rows = &mut report.paths;
    paths
        .measure(s, rows, &scenario, "direct (XADD)", direct_op, Vec::new())
        .await;
    let op = via(sidecar.http, "redispubsub", &topic, body.clone());
    let pids = vec![sidecar.pid];
    paths
        .measure(s, rows, &scenario, "Tandem HTTP/1.1", op, pids)
        .await;
    let scenario_rows = paths.finish(s, rows, true).await;
    for r in &rows[scenario_rows] {
        if let Some(e) = &r.error {
            failed.push(format!("{scenario} / {}: {e}", r.path));
        }
    }

    let scenario = format!("publish in-memory, {} B", s.payload);
    eprintln!("{scenario}");
    let mut paths = Paths::new(rows);
    let op = via(sidecar.http, "mempubsub", &topic, body);
    let pids = vec![sidecar.pid];
    paths
        .measure(s, rows, &scenario, "Tandem HTTP/1.1", op, pids)
        .await;
    let scenario_rows = paths.finish(s, rows, false).await;
    for r in &rows[scenario_rows] {
        if let Some(e) = &r.error {
            failed.push(format!("{scenario}: {e}"));
        }
    }

    let mut conn = conn;
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&topic)
        .arg(&direct_topic)
        .query_async(&mut conn)
        .await;
    let log = sidecar.log();
    sidecar.stop().await?;
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
