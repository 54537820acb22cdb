//! `state.redis` (and `pubsub.redis`) with `failover: true` against real Redis Sentinel processes, which each test
//! starts itself (`redis-server <conf> --sentinel`, on free ports, killed when the test ends).
//!
//! The CRUD cases (and one `pubsub.redis` case) put a sentinel in front of the Redis at
//! 127.0.0.1:6379; the failover case
//! runs a master and a replica of its own, kills the master and checks that the store follows
//! the sentinel to the promoted replica. Skipped (with a one-line reason) when `redis-server`
//! is not installed or the local Redis is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_components::conformance::pubsub::{collector, publish, recv_n, subscribe};
use tandem_components::pubsub::Delivery;
use tandem_components::state::{
    DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, StateStore, TransactionOperation,
    TransactionRequest,
};
use tandem_components::{Error, Metadata};
use tandem_redis::{RedisPubSub, RedisStateStore};
use tandem_testkit::proxy::free_port;
use tandem_testkit::services;
use tempfile::TempDir;

const LOCAL_REDIS: &str = "127.0.0.1:6379";

/// A `redis-server` process (data node or sentinel), killed and reaped on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process now (a crash: no shutdown, no save).
    fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `redis-server` can be run; otherwise says why the test is skipped (or panics when
/// services are required).
fn redis_server_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !services::required(),
            "redis-server is not installed and TANDEM_REQUIRE_SERVICES=1"
        );
        eprintln!("skipping: redis-server is not installed");
    }
    found
}

/// Starts `redis-server` with `config` (the `port` line is added) in a fresh folder, plus
/// `extra` command-line arguments, and waits until it accepts connections.
fn start(config: &str, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = dir.path().join("redis.conf");
    let text = format!(
        "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly no\n{config}",
        dir.path().display()
    );
    std::fs::write(&path, text).expect("write config");
    let log = std::fs::File::create(dir.path().join("log")).expect("log file");
    let child = Command::new("redis-server")
        .arg(&path)
        .args(extra)
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let server = Server {
        child,
        port,
        _dir: dir,
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !services::reachable(&server.addr()) {
        assert!(
            Instant::now() < until,
            "redis-server on port {port} did not start: {}",
            read_log(server._dir.path())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

/// A sentinel monitoring the master at `master` (`host:port`) under `name`, quorum 1, which
/// calls a master down after one second.
fn start_sentinel(name: &str, master: &str, extra_config: &str) -> Server {
    let (host, port) = master.split_once(':').expect("host:port");
    let config = format!(
        "sentinel monitor {name} {host} {port} 1\n\
         sentinel down-after-milliseconds {name} 1000\n\
         sentinel failover-timeout {name} 10000\n\
         {extra_config}\n"
    );
    start(&config, &["--sentinel"])
}

/// A master name no other test run uses (sentinels gossip on the master they monitor).
fn master_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "tandem-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn direct(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection")
}

fn sentinel_metadata(sentinels: &str, name: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::new("redis-sentinel", "sentinel-test")
        .with("redisHost", sentinels)
        .with("failover", "true")
        .with("sentinelMasterName", name);
    for (k, v) in extra {
        m.insert(*k, *v);
    }
    m
}

fn key(case: &str) -> String {
    tandem_components::conformance::unique_key(case)
}

fn set(key: &str, value: &str) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

async fn read(store: &RedisStateStore, key: &str) -> tandem_components::Result<Option<Bytes>> {
    let meta = RequestMetadata::new();
    store
        .get(GetRequest {
            key,
            consistency: Default::default(),
            metadata: &meta,
        })
        .await
        .map(|item| item.map(|i| i.value))
}

/// Set, get, ETags, delete, bulk and a transaction, all through a sentinel in front of the
/// local Redis; the data is where a direct client sees it.
#[tokio::test]
async fn crud_through_a_sentinel() {
    if !redis_server_installed() || !services::require("Redis", LOCAL_REDIS) {
        return;
    }
    let name = master_name();
    let sentinel = start_sentinel(&name, LOCAL_REDIS, "");
    let store = RedisStateStore::build(&sentinel_metadata(&sentinel.addr(), &name, &[]))
        .await
        .expect("build");
    store.ping().await.expect("ping through the sentinel");

    let k = key("sentinel-crud");
    store.set(set(&k, "one")).await.expect("set");
    assert_eq!(
        read(&store, &k).await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let mut direct = direct(LOCAL_REDIS).await;
    let stored: Vec<u8> = redis::cmd("HGET")
        .arg(&k)
        .arg("data")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored, b"one", "written to the master the sentinel names");

    let mut stale = set(&k, "two");
    stale.etag = Some(ETag::from("7"));
    assert!(matches!(store.set(stale).await, Err(Error::ETagMismatch)));
    let mut fresh = set(&k, "two");
    fresh.etag = Some(ETag::from("1"));
    store.set(fresh).await.expect("set with the current etag");

    let (a, b) = (key("sentinel-bulk-a"), key("sentinel-bulk-b"));
    store
        .bulk_set(vec![set(&a, "A"), set(&b, "B")])
        .await
        .expect("bulk set");
    let items = store
        .bulk_get(&[a.clone(), b.clone()], &RequestMetadata::new())
        .await
        .expect("bulk get");
    assert!(items.iter().all(|i| i.item.is_some()));

    store
        .transactional()
        .expect("transactional")
        .multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Delete(DeleteRequest {
                    key: a.clone(),
                    ..Default::default()
                }),
                TransactionOperation::Upsert(set(&b, "B2")),
            ],
            metadata: Default::default(),
        })
        .await
        .expect("transaction");
    assert_eq!(read(&store, &a).await.unwrap(), None);
    assert_eq!(read(&store, &b).await.unwrap().as_deref(), Some(&b"B2"[..]));

    for k in [&k, &b] {
        store
            .delete(DeleteRequest {
                key: k.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
        assert_eq!(read(&store, k).await.unwrap(), None);
    }
}

/// `pubsub.redis` through a sentinel: the shared connection (publish, acknowledge) and the
/// subscription's dedicated read connection both go to the master the sentinel names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_through_a_sentinel() {
    if !redis_server_installed() || !services::require("Redis", LOCAL_REDIS) {
        return;
    }
    let name = master_name();
    let sentinel = start_sentinel(&name, LOCAL_REDIS, "");
    let ps = RedisPubSub::build(&sentinel_metadata(&sentinel.addr(), &name, &[]))
        .await
        .expect("build");
    let topic = key("sentinel-pubsub");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "sentinel-readers", 4, h).await;
    for i in 0..3 {
        publish(&ps, &topic, format!("m{i}")).await;
    }
    let got = recv_n(&mut rx, 3).await;
    assert!(got.iter().all(|m| m.topic == topic));
    sub.close().await;
    let _: () = redis::cmd("DEL")
        .arg(&topic)
        .query_async(&mut direct(LOCAL_REDIS).await)
        .await
        .unwrap();
}

/// `redisDB` applies to the master connection (not to the sentinels, which have no databases).
#[tokio::test]
async fn the_database_applies_to_the_master() {
    if !redis_server_installed() || !services::require("Redis", LOCAL_REDIS) {
        return;
    }
    let name = master_name();
    let sentinel = start_sentinel(&name, LOCAL_REDIS, "");
    let store = RedisStateStore::build(&sentinel_metadata(
        &sentinel.addr(),
        &name,
        &[("redisDB", "5")],
    ))
    .await
    .expect("build");
    let k = key("sentinel-db");
    store.set(set(&k, "in five")).await.expect("set");
    let mut direct = direct(&format!("{LOCAL_REDIS}/5")).await;
    let stored: Vec<u8> = redis::cmd("HGET")
        .arg(&k)
        .arg("data")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored, b"in five");
    let _: () = redis::cmd("DEL")
        .arg(&k)
        .query_async(&mut direct)
        .await
        .unwrap();
}

/// `sentinelPassword` logs in to a sentinel that requires a password; without it the store
/// answers a backend error that does not quote the password.
#[tokio::test]
async fn sentinel_password() {
    if !redis_server_installed() || !services::require("Redis", LOCAL_REDIS) {
        return;
    }
    let name = master_name();
    let secret = "sentinel-pw-for-tests";
    let sentinel = start_sentinel(&name, LOCAL_REDIS, &format!("requirepass {secret}"));
    let without = RedisStateStore::build(&sentinel_metadata(&sentinel.addr(), &name, &[]))
        .await
        .expect("build");
    let err = without.ping().await.expect_err("no sentinel password");
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    let with = RedisStateStore::build(&sentinel_metadata(
        &sentinel.addr(),
        &name,
        &[("sentinelPassword", secret)],
    ))
    .await
    .expect("build");
    with.ping().await.expect("ping with the sentinel password");
    let wrong = RedisStateStore::build(&sentinel_metadata(
        &sentinel.addr(),
        &name,
        &[("sentinelPassword", "not-the-password")],
    ))
    .await
    .expect("build");
    let err = wrong.ping().await.expect_err("wrong password");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
}

/// A master name the sentinels do not know, and sentinels that are not there, are backend
/// errors answered quickly; building never waits.
#[tokio::test]
async fn unknown_master_and_missing_sentinels_fail_fast() {
    if !redis_server_installed() || !services::require("Redis", LOCAL_REDIS) {
        return;
    }
    let name = master_name();
    let sentinel = start_sentinel(&name, LOCAL_REDIS, "");
    let started = Instant::now();
    let unknown = RedisStateStore::build(&sentinel_metadata(&sentinel.addr(), "no-such", &[]))
        .await
        .expect("build");
    let err = unknown.ping().await.expect_err("unknown master");
    assert!(matches!(err, Error::Backend(_)), "{err:?}");

    let nowhere = format!("127.0.0.1:{}", free_port());
    let missing = RedisStateStore::build(&sentinel_metadata(&nowhere, &name, &[]))
        .await
        .expect("build while no sentinel runs");
    assert!(matches!(missing.ping().await, Err(Error::Backend(_))));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Several sentinels, the first one absent: the next one answers.
    let listed = RedisStateStore::build(&sentinel_metadata(
        &format!("{nowhere},{}", sentinel.addr()),
        &name,
        &[],
    ))
    .await
    .expect("build");
    listed.ping().await.expect("the second sentinel answers");
}

/// The master crashes; the sentinel promotes the replica; the same store, without being
/// rebuilt, writes to the new master and reads what was written before the crash.
#[tokio::test]
async fn follows_a_failover() {
    if !redis_server_installed() {
        return;
    }
    let mut master = start("", &[]);
    let replica = start(
        &format!(
            "replicaof 127.0.0.1 {}\nreplica-priority 100\n",
            master.port
        ),
        &[],
    );
    let mut on_replica = direct(&replica.addr()).await;
    wait_until(
        "the replica is in sync",
        Duration::from_secs(15),
        async || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut on_replica)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        },
    )
    .await;

    let name = master_name();
    let sentinel = start_sentinel(&name, &master.addr(), "");
    let mut on_sentinel = direct(&sentinel.addr()).await;
    wait_until(
        "the sentinel knows the replica",
        Duration::from_secs(15),
        async || {
            let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(&name)
                .query_async(&mut on_sentinel)
                .await
                .unwrap_or_default();
            !replicas.is_empty()
        },
    )
    .await;

    let store = RedisStateStore::build(&sentinel_metadata(
        &sentinel.addr(),
        &name,
        &[("redisMinRetryInterval", "50ms")],
    ))
    .await
    .expect("build");
    store.set(set("before", "written")).await.expect("set");
    let mut on_master = direct(&master.addr()).await;
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut on_master)
        .await
        .unwrap();

    master.crash();
    let crashed = Instant::now();
    let mut failures = 0;
    let mut attempt = 0;
    // Write until a write lands on the promoted replica; every attempt is the same store.
    loop {
        attempt += 1;
        let value = format!("after-{attempt}");
        match store.set(set("after", &value)).await {
            Ok(()) => {
                // A fresh connection: the promotion closed the replica's client connections.
                let there: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg("after")
                    .arg("data")
                    .query_async(&mut direct(&replica.addr()).await)
                    .await
                    .unwrap();
                assert_eq!(
                    there.as_deref(),
                    Some(value.as_bytes()),
                    "a successful write goes to the promoted replica"
                );
                break;
            }
            Err(e) => {
                assert!(matches!(e, Error::Backend(_)), "{e:?}");
                failures += 1;
            }
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(40),
            "no write succeeded within 40s of the crash ({failures} failures)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "failover followed after {:?} and {failures} failed writes",
        crashed.elapsed()
    );
    assert_eq!(
        read(&store, "before").await.unwrap().as_deref(),
        Some(&b"written"[..]),
        "data written before the crash is read from the new master"
    );
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut direct(&replica.addr()).await)
        .await
        .unwrap();
    assert!(
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"),
        "{role:?}"
    );
}

/// Polls `check` every 50 ms until it holds, or panics after `within`.
async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
