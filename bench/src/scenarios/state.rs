//! State GET and SET through one sidecar (`state.in-memory`, `state.redis`,
//! `state.postgresql` v1) over HTTP/1.1, h2c and gRPC, against the exact backend commands
//! each component runs:
//!
//! - Redis GET: the component's read pipeline, `HMGET <key> data version` + `PTTL <key>`;
//! - Redis SET: the component's write script (`EVALSHA`, the same Lua text, imported from the
//!   component crate) with the same arguments as an unconditional set;
//! - PostgreSQL GET / SET: the component's v1 `SELECT … WHERE key = $1 AND <live>` and
//!   `INSERT … ON CONFLICT (key) DO UPDATE`, prepared, on a pool of 4 connections (the
//!   component's default pool size on a 2-core machine).
//!
//! GET reads one key; SET paths write [`SET_KEYS`] keys in turn (the same sequence on every
//! path). `state.in-memory` has no direct path; its rows are absolute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use dapr::dapr::proto::common::v1::StateItem;
use dapr::dapr::proto::runtime::v1::{GetStateRequest, GetStateResponse, SaveStateRequest};
use http::Method;
use tokio_postgres::types::Type;

use super::Paths;
use crate::clients::{self, Http};
use crate::load::{Op, op};
use crate::procs::SidecarSpec;
use crate::report::Report;
use crate::resources;
use crate::settings::{Protocol, Settings, Store};

/// The value read and written: a typical small JSON document.
pub const VALUE: &str = r#"{"id":42,"name":"a typical small JSON value","tags":["x","y"]}"#;
/// The sidecar's app-id (state keys are prefixed `bench||`).
pub const APP_ID: &str = "bench";
/// The key read.
pub const GET_KEY: &str = "bench-key";
/// Keys written: `bench-set-0` … `bench-set-1023`, in turn, so that writes do not all queue
/// on one row lock (PostgreSQL) but still touch a small, cached key set.
pub const SET_KEYS: u64 = 1024;

/// The key of the next write of a path.
#[derive(Clone, Default)]
pub struct SetKey(Arc<AtomicU64>);

impl SetKey {
    /// The next key (without the app-id prefix).
    pub fn next(&self) -> String {
        format!(
            "bench-set-{}",
            self.0.fetch_add(1, Ordering::Relaxed) % SET_KEYS
        )
    }
}
/// The PostgreSQL table of the benchmark's store.
pub const PG_TABLE: &str = "bench_state";

/// The component name of a store.
pub fn store_name(store: Store) -> &'static str {
    match store {
        Store::Memory => "memstore",
        Store::Redis => "redisstore",
        Store::Postgres => "pgstore",
    }
}

fn label(store: Store) -> &'static str {
    match store {
        Store::Memory => "in-memory",
        Store::Redis => "redis",
        Store::Postgres => "postgresql",
    }
}

/// The sidecar spec with the given stores.
pub fn sidecar(s: &Settings, stores: &[Store]) -> SidecarSpec {
    let mut spec = SidecarSpec::new(APP_ID);
    spec.wrapper = s.wrapper();
    for store in stores {
        let name = store_name(*store);
        let yaml = match store {
            Store::Memory => resources::memory_state(name),
            Store::Redis => resources::redis_state(name, &s.redis),
            Store::Postgres => resources::postgres_state(name, &s.postgres, PG_TABLE),
        };
        spec = spec.resource(&format!("{name}.yaml"), yaml);
    }
    spec
}

/// Writes the value read by the GET paths through the sidecar's HTTP API.
pub async fn seed(http_port: u16, store: Store) -> Result<(), String> {
    let client = clients::http(Http::H1);
    let body = format!(r#"[{{"key":"{GET_KEY}","value":{VALUE}}}]"#);
    clients::call(
        &client,
        Method::POST,
        &clients::uri(http_port, &format!("/v1.0/state/{}", store_name(store))),
        Bytes::from(body),
        &[("content-type", "application/json")],
        204,
    )
    .await
    .map(drop)
}

/// A GET or SET through the sidecar over `protocol`.
pub fn via(protocol: Protocol, http_port: u16, grpc_port: u16, store: Store, set: bool) -> Op {
    let name = store_name(store);
    match protocol {
        Protocol::Http1 => {
            let client = crate::raw::H1::new(http_port);
            if set {
                let path = format!("/v1.0/state/{name}");
                let keys = SetKey::default();
                op(move || {
                    let client = client.clone();
                    let body = format!(r#"[{{"key":"{}","value":{VALUE}}}]"#, keys.next());
                    let req = client.request(
                        "POST",
                        &path,
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    );
                    async move { client.call(&req, 204).await.map(drop) }
                })
            } else {
                let req: Arc<[u8]> = client
                    .request("GET", &format!("/v1.0/state/{name}/{GET_KEY}"), &[], b"")
                    .into();
                op(move || {
                    let (client, req) = (client.clone(), req.clone());
                    async move { check_value(&client.call(&req, 200).await?) }
                })
            }
        }
        Protocol::Http1Hyper | Protocol::H2c => {
            let client = clients::http(if protocol == Protocol::Http1Hyper {
                Http::H1
            } else {
                Http::H2c
            });
            if set {
                let uri = clients::uri(http_port, &format!("/v1.0/state/{name}"));
                let keys = SetKey::default();
                op(move || {
                    let (client, uri) = (client.clone(), uri.clone());
                    let body =
                        Bytes::from(format!(r#"[{{"key":"{}","value":{VALUE}}}]"#, keys.next()));
                    async move {
                        clients::call(
                            &client,
                            Method::POST,
                            &uri,
                            body,
                            &[("content-type", "application/json")],
                            204,
                        )
                        .await
                        .map(drop)
                    }
                })
            } else {
                let uri = clients::uri(http_port, &format!("/v1.0/state/{name}/{GET_KEY}"));
                op(move || {
                    let (client, uri) = (client.clone(), uri.clone());
                    async move {
                        let body =
                            clients::call(&client, Method::GET, &uri, Bytes::new(), &[], 200)
                                .await?;
                        check_value(&body)
                    }
                })
            }
        }
        Protocol::Grpc => via_grpc(
            GrpcClient::Lean(crate::raw::Grpc::new(grpc_port)),
            name,
            set,
        ),
        Protocol::GrpcMux => via_grpc(
            GrpcClient::Mux(crate::raw::GrpcMux::new(grpc_port)),
            name,
            set,
        ),
        Protocol::GrpcTonic => via_grpc(
            GrpcClient::Tonic(Box::new(clients::grpc(grpc_port))),
            name,
            set,
        ),
    }
}

const GET_STATE: &str = "/dapr.proto.runtime.v1.Dapr/GetState";
const SAVE_STATE: &str = "/dapr.proto.runtime.v1.Dapr/SaveState";

/// The gRPC client of a path.
#[derive(Clone)]
enum GrpcClient {
    /// The benchmark's own lean unary client.
    Lean(crate::raw::Grpc),
    /// The same on one multiplexed connection.
    Mux(crate::raw::GrpcMux),
    /// tonic's generated client.
    Tonic(Box<clients::Grpc>),
}

impl GrpcClient {
    async fn save_state(self, req: SaveStateRequest) -> Result<(), String> {
        match self {
            Self::Lean(c) => c.unary::<_, ()>(SAVE_STATE, &req).await.map(drop),
            Self::Mux(c) => c.unary::<_, ()>(SAVE_STATE, &req).await.map(drop),
            Self::Tonic(mut c) => c
                .save_state(req)
                .await
                .map(drop)
                .map_err(|s| format!("SaveState: {s}")),
        }
    }

    async fn get_state(self, req: GetStateRequest) -> Result<Vec<u8>, String> {
        match self {
            Self::Lean(c) => c
                .unary::<_, GetStateResponse>(GET_STATE, &req)
                .await
                .map(|r| r.data),
            Self::Mux(c) => c
                .unary::<_, GetStateResponse>(GET_STATE, &req)
                .await
                .map(|r| r.data),
            Self::Tonic(mut c) => c
                .get_state(req)
                .await
                .map(|r| r.into_inner().data)
                .map_err(|s| format!("GetState: {s}")),
        }
    }
}

/// A GET or SET over gRPC through `client`.
fn via_grpc(client: GrpcClient, name: &str, set: bool) -> Op {
    if set {
        let keys = SetKey::default();
        let name = name.to_owned();
        op(move || {
            let req = SaveStateRequest {
                store_name: name.clone(),
                states: vec![StateItem {
                    key: keys.next(),
                    value: VALUE.as_bytes().to_vec(),
                    ..Default::default()
                }],
            };
            client.clone().save_state(req)
        })
    } else {
        let req = GetStateRequest {
            store_name: name.to_owned(),
            key: GET_KEY.to_owned(),
            ..Default::default()
        };
        op(move || {
            let get = client.clone().get_state(req.clone());
            async move { check_value(&get.await?) }
        })
    }
}

fn check_value(body: &[u8]) -> Result<(), String> {
    if body == VALUE.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "unexpected value {:?}",
            String::from_utf8_lossy(&body[..body.len().min(100)])
        ))
    }
}

fn prefixed(key: &str) -> String {
    format!("{APP_ID}||{key}")
}

/// The direct path of `store`, with its label; `None` for the in-memory store.
pub async fn direct(s: &Settings, store: Store, set: bool) -> Result<Option<(String, Op)>, String> {
    match store {
        Store::Memory => Ok(None),
        Store::Redis => redis_direct(s, set).await.map(Some),
        Store::Postgres => postgres_direct(s, set).await.map(Some),
    }
}

/// A Redis connection like the component's (one multiplexed, self-reconnecting connection).
pub async fn redis_connection(s: &Settings) -> Result<redis::aio::ConnectionManager, String> {
    // TCP_NODELAY, like the component's connection.
    let info = redis::IntoConnectionInfo::into_connection_info(format!("redis://{}", s.redis))
        .map_err(|e| e.to_string())?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    client
        .get_connection_manager()
        .await
        .map_err(|e| format!("cannot connect to Redis at {}: {e}", s.redis))
}

async fn redis_direct(s: &Settings, set: bool) -> Result<(String, Op), String> {
    let conn = redis_connection(s).await?;
    if set {
        let script = Arc::new(redis::Script::new(tandem_redis::state::WRITE_SCRIPT));
        let keys = SetKey::default();
        return Ok((
            "direct (EVALSHA write script)".into(),
            op(move || {
                let (mut conn, script) = (conn.clone(), script.clone());
                let key = prefixed(&keys.next());
                async move {
                    // Unconditional set: in-order mode, kind, no ETag, not first-write, keep
                    // the TTL, the value.
                    let failed: i64 = script
                        .key(&key)
                        .arg("0")
                        .arg("s")
                        .arg("")
                        .arg("0")
                        .arg("")
                        .arg(VALUE)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    if failed == 0 {
                        Ok(())
                    } else {
                        Err(format!("write script answered {failed}"))
                    }
                }
            }),
        ));
    }
    let key = prefixed(GET_KEY);
    Ok((
        "direct (HMGET+PTTL)".into(),
        op(move || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET").arg(&key).arg("data").arg("version");
                pipe.cmd("PTTL").arg(&key);
                let (fields, _pttl): (Vec<Option<Vec<u8>>>, i64) = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                check_value(fields.first().and_then(Option::as_deref).unwrap_or(b""))
            }
        }),
    ))
}

const LIVE: &str = "(expiredate IS NULL OR expiredate > now())";

async fn postgres_direct(s: &Settings, set: bool) -> Result<(String, Op), String> {
    let table = PG_TABLE;
    let (sql, types): (String, &[Type]) = if set {
        (
            format!(
                "INSERT INTO {table} AS t (key, value, isbinary, expiredate) \
                 VALUES ($1, $2::jsonb, $3, now() + $4 * interval '1 second') \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 isbinary = excluded.isbinary, updatedate = now(), expiredate = excluded.expiredate"
            ),
            &[Type::TEXT, Type::TEXT, Type::BOOL, Type::FLOAT8],
        )
    } else {
        (
            format!(
                "SELECT value::text, isbinary, xmin::text, expiredate FROM {table} \
                 WHERE key = $1 AND {LIVE}"
            ),
            &[Type::TEXT],
        )
    };
    let mut pool = Vec::new();
    for _ in 0..4 {
        let (client, connection) = tokio_postgres::connect(&s.postgres, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        tokio::spawn(connection);
        let stmt = client
            .prepare_typed(&sql, types)
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        pool.push((client, stmt));
    }
    let pool = Arc::new(pool);
    let next = Arc::new(AtomicUsize::new(0));
    let keys = SetKey::default();
    let label = if set {
        "direct (INSERT … ON CONFLICT)"
    } else {
        "direct (SELECT)"
    };
    Ok((
        label.into(),
        op(move || {
            let (pool, next) = (pool.clone(), next.clone());
            let key = prefixed(&if set { keys.next() } else { GET_KEY.to_owned() });
            async move {
                let (client, stmt) = &pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()];
                if set {
                    let ttl: Option<f64> = None;
                    let n = client
                        .execute(stmt, &[&key, &VALUE, &false, &ttl])
                        .await
                        .map_err(|e| e.to_string())?;
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(format!("{n} rows changed"))
                    }
                } else {
                    let rows = client
                        .query(stmt, &[&key])
                        .await
                        .map_err(|e| e.to_string())?;
                    let value: &str = rows.first().ok_or("no row")?.get(0);
                    // JSONB normalises spacing; the component answers its own text form too.
                    if value.is_empty() {
                        Err("empty value".into())
                    } else {
                        Ok(())
                    }
                }
            }
        }),
    ))
}

/// Runs the state scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    let sidecar = sidecar(s, &s.stores).start(&s.tandem).await?;
    for store in &s.stores {
        seed(sidecar.http, *store)
            .await
            .map_err(|e| format!("seeding {}: {e}", label(*store)))?;
    }
    let mut failed = Vec::new();
    for store in &s.stores {
        for op_name in &s.ops {
            let set = op_name == "set";
            let scenario = format!(
                "state {} {}",
                if set { "SET" } else { "GET" },
                label(*store)
            );
            eprintln!("{scenario}");
            let mut paths = Paths::new(&report.paths);
            let rows = &mut report.paths;
            let direct_first = match direct(s, *store, set).await {
                Ok(Some((path, op))) => {
                    paths
                        .measure(s, rows, &scenario, &path, op, Vec::new())
                        .await;
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    let mut row = crate::report::PathRow::new(&scenario, "direct");
                    row.error = Some(e);
                    rows.push(row);
                    true
                }
            };
            for protocol in &s.protocols {
                let path = match protocol {
                    Protocol::Http1 => "Tandem HTTP/1.1",
                    Protocol::Http1Hyper => "Tandem HTTP/1.1 (hyper client)",
                    Protocol::H2c => "Tandem h2c",
                    Protocol::Grpc => "Tandem gRPC",
                    Protocol::GrpcMux => "Tandem gRPC (one multiplexed connection)",
                    Protocol::GrpcTonic => "Tandem gRPC (tonic client)",
                };
                let op = via(*protocol, sidecar.http, sidecar.grpc, *store, set);
                let pids = vec![sidecar.pid];
                paths.measure(s, rows, &scenario, path, op, pids).await;
            }
            let scenario_rows = paths.finish(s, rows, direct_first).await;
            for row in &rows[scenario_rows] {
                if row.error.is_some() {
                    failed.push(format!("{scenario} / {}", row.path));
                }
            }
        }
    }
    let log = sidecar.log();
    sidecar.stop().await?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "failed paths: {}; sidecar log:\n{}",
            failed.join(", "),
            tail(&log, 20)
        ))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
