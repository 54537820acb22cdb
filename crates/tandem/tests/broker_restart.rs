//! End-to-end: a broker restarts under load. A steady publisher (80 messages a second
//! through the sidecar's HTTP API) runs while the test stops the broker and starts it again
//! on the same port and data folder. Until the stop the subscriber app is slow, so that the
//! broker holds a backlog and the sidecar holds unacknowledged messages when it goes away.
//! Publishes may fail while it is down, but every publish answered 204 must reach the
//! subscriber app afterwards (counted by a unique number; duplicates are allowed), and the
//! sidecar must reconnect by itself: publishing works again and stays working, with no
//! restart of the sidecar.
//!
//! Each test runs a private server it may stop (the machine's shared servers serve other
//! tests), from the binary found on the `PATH`; skipped when the binary is absent, unless
//! `TANDEM_REQUIRE_SERVICES=1`:
//! * Redis (`redis-server --appendonly yes --appendfsync always`), killed with SIGKILL;
//! * NATS with JetStream (`nats-server -js -sd <dir>`, a file-backed stream), killed with
//!   SIGKILL;
//! * Mosquitto with persistence, stopped with SIGTERM: Mosquitto writes its persistence file
//!   on shutdown and at intervals, not before it acknowledges a message, so after a SIGKILL
//!   it forgets the messages it had queued (acknowledged to the publisher) by design;
//! * RabbitMQ (a node of its own with its own node name, ports, database and Erlang cookie;
//!   durable queues and persistent messages), killed with SIGKILL;
//! * Kafka: tansu (found as `tandem_testkit::kafka` finds it) keeping its data in an
//!   S3-compatible object store of the test's own (moto's server, which stays up: tansu as
//!   shipped stores data only in memory or in an object store), killed with SIGKILL and
//!   started again against the same bucket; skipped when either program cannot be had.
//!
//! Components are configured for durability where that is a choice (persistent sessions in
//! MQTT, `deliveryMode: 2` and queues kept while unused in RabbitMQ).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pubsub::{self, Broker, component, meta};
use serde_json::json;
use tandem_testkit::Sidecar;
use tandem_testkit::kafka;
use tandem_testkit::server::PrivateServer;
use tandem_testkit::subscriber::{Answer, Subscriber};

/// The publisher's pace.
const EVERY: Duration = Duration::from_millis(12);
/// Load before the broker goes away.
const BEFORE: Duration = Duration::from_millis(1500);
/// How long the app takes per message until the broker goes away.
const SLOW: Duration = Duration::from_millis(800);
/// How long the broker stays away.
const DOWN: Duration = Duration::from_secs(1);
/// How long publishing must have worked without a failure to count as recovered.
const STABLE: Duration = Duration::from_millis(1500);
/// How long the sidecar may take to recover after the broker is back.
const RECOVERY: Duration = Duration::from_secs(25);
/// How long the deliveries may take once publishing stopped.
const DELIVERY: Duration = Duration::from_secs(30);
/// One publish request's deadline.
const REQUEST: Duration = Duration::from_secs(5);

/// How the broker goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL.
    Kill,
    /// SIGTERM, a clean shutdown.
    Terminate,
}

/// One publish and its outcome.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    n: u64,
    sent: Instant,
    /// `None` while in flight; `Some(true)` for a 204.
    accepted: Option<bool>,
}

/// Publishes `{"n": …}` at a steady pace, each request on its own task, until stopped.
struct Publisher {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(sc: &Sidecar, topic: &str) -> Self {
        let url = sc.url(&format!("/v1.0/publish/pubsub/{topic}"));
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let record = outcomes.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(REQUEST).build().unwrap();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut requests = Vec::new();
            for n in 0u64.. {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                let idx = {
                    let mut o = record.lock().unwrap();
                    o.push(Outcome {
                        n,
                        sent: Instant::now(),
                        accepted: None,
                    });
                    o.len() - 1
                };
                let req = client.post(&url).json(&json!({"n": n})).send();
                let record = record.clone();
                requests.push(tokio::spawn(async move {
                    let accepted = matches!(req.await, Ok(r) if r.status() == 204);
                    record.lock().unwrap()[idx].accepted = Some(accepted);
                }));
            }
            for r in requests {
                let _ = r.await;
            }
        });
        Self {
            outcomes,
            stop,
            task,
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Stops publishing and waits for the requests in flight.
    async fn finish(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.outcomes.lock().unwrap().clone()
    }
}

/// Whether publishing has recovered since `up`: the publishes answered in the last
/// [`STABLE`] were all sent after `up` and all accepted, and there were enough of them.
fn recovered(outcomes: &[Outcome], up: Instant) -> bool {
    let now = Instant::now();
    let window: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.accepted.is_some() && now.duration_since(o.sent) <= STABLE)
        .collect();
    // Publishes still in flight from before the window count too: a hanging request is no
    // recovery.
    let stuck = outcomes.iter().any(|o| {
        o.accepted.is_none() && o.sent >= up && now.duration_since(o.sent) > Duration::from_secs(1)
    });
    let wanted = (STABLE.as_millis() / EVERY.as_millis()) as usize / 2;
    !stuck
        && window.len() >= wanted
        && window
            .iter()
            .all(|o| o.sent > up && o.accepted == Some(true))
}

/// The scenario: subscribe, publish steadily, stop the broker, start it again, wait for
/// publishing to recover, then check that every accepted publish was delivered.
async fn restart_under_load(server: &mut PrivateServer, b: &Broker, extra: &str, stop: Stop) {
    let topic = b.unique("steady");
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/steady"}]))
            .await;
    // Until the broker goes away the app is slow: messages pile up in the broker (and in
    // flight, unacknowledged), so that the restart has something to keep.
    sub.answer("/steady", Answer::Slow(SLOW));
    let sc = b.sidecar_with(&b.app_id("steady"), extra, Some(&sub)).await;
    b.wait_subscribed(&sc, 1).await;

    let publisher = Publisher::start(&sc, &topic);
    tokio::time::sleep(BEFORE).await;
    let down = Instant::now();
    match stop {
        Stop::Kill => server.kill().await,
        Stop::Terminate => server.terminate().await,
    }
    sub.answer("/steady", Answer::Success);
    tokio::time::sleep(DOWN).await;
    server
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} did not start again: {e}", b.name));
    let up = Instant::now();
    eprintln!(
        "{}: down for {:?} ({stop:?})",
        b.name,
        up.duration_since(down)
    );
    while !recovered(&publisher.outcomes(), up) {
        if up.elapsed() > RECOVERY {
            let o = publisher.finish().await;
            let after = o.iter().filter(|o| o.sent > up).count();
            let ok = o
                .iter()
                .filter(|o| o.sent > up && o.accepted == Some(true))
                .count();
            panic!(
                "{}: publishing did not recover within {RECOVERY:?} of the restart ({ok} of {after} accepted since); sidecar log:\n{}\nserver log:\n{}",
                b.name,
                sc.log(),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = up.elapsed().saturating_sub(STABLE);
    let outcomes = publisher.finish().await;

    let accepted: BTreeSet<u64> = outcomes
        .iter()
        .filter(|o| o.accepted == Some(true))
        .map(|o| o.n)
        .collect();
    let before = outcomes
        .iter()
        .filter(|o| o.sent < down && o.accepted == Some(true))
        .count();
    let refused = outcomes.len() - accepted.len();
    eprintln!(
        "{}: {} publishes, {} accepted ({before} before the stop), {refused} failed; recovered about {recovery:?} after the restart",
        b.name,
        outcomes.len(),
        accepted.len()
    );
    assert!(before > 0, "{}: nothing accepted before the stop", b.name);
    // The tail of the run: everything sent once publishing had recovered was accepted.
    let late_failures: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.sent > up + recovery && o.accepted != Some(true))
        .map(|o| o.n)
        .collect();
    assert!(
        late_failures.is_empty(),
        "{}: publishes failed after the recovery: {late_failures:?}",
        b.name
    );

    let delivered = |sub: &Subscriber| -> BTreeSet<u64> {
        sub.received()
            .iter()
            .filter_map(|r| r.body["data"]["n"].as_u64())
            .collect()
    };
    let until = Instant::now() + DELIVERY;
    loop {
        let got = delivered(&sub);
        let missing: Vec<u64> = accepted.difference(&got).copied().collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > until {
            panic!(
                "{}: {} accepted publishes never reached the app (of {}): {:?}; sidecar log:\n{}\nserver log:\n{}",
                b.name,
                missing.len(),
                accepted.len(),
                &missing[..missing.len().min(50)],
                sc.log(),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = sub.received().len();
    eprintln!(
        "{}: every accepted publish delivered ({deliveries} deliveries for {} distinct)",
        b.name,
        delivered(&sub).len()
    );
}

/// Starts `server`, panicking with its log when it does not come up.
async fn start(server: &mut PrivateServer, name: &str) {
    if let Err(e) = server.start().await {
        panic!("cannot start a private {name}: {e}");
    }
}

#[tokio::test]
async fn redis_restarts_under_load() {
    let Some(mut server) = PrivateServer::find("Redis", "redis-server") else {
        return;
    };
    let (port, dir) = (server.port(), server.dir().display().to_string());
    server
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no");
    start(&mut server, "Redis").await;
    let b = Broker::redis().at(&server.addr());
    restart_under_load(&mut server, &b, "", Stop::Kill).await;
}

#[tokio::test]
async fn jetstream_restarts_under_load() {
    let Some(mut server) = PrivateServer::find("NATS", "nats-server") else {
        return;
    };
    let (port, dir) = (server.port(), server.dir().join("jetstream"));
    server
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg("-js")
        .arg("-sd")
        .arg(dir.display().to_string());
    start(&mut server, "NATS").await;
    // A file-backed stream (the default storage) for the topics.
    pubsub::nats_stream_ready(&server.addr()).await;
    let b = Broker::jetstream().at(&server.addr());
    restart_under_load(&mut server, &b, "", Stop::Kill).await;
}

/// `pubsub.mqtt3` with a persistent session: the broker keeps the subscription and the
/// messages not yet acknowledged across the reconnection.
fn mqtt_persistent_yaml(addr: &str, extra: &str) -> String {
    let m = meta("url", &format!("tcp://{addr}"))
        + &meta("consumerID", "{uuid}")
        + &meta("cleanSession", "false")
        + &meta("qos", "1");
    component("pubsub.mqtt3", &(m + extra))
}

#[tokio::test]
async fn mosquitto_restarts_under_load() {
    let Some(mut server) = PrivateServer::find("Mosquitto", "mosquitto") else {
        return;
    };
    let conf = server.dir().join("mosquitto.conf");
    // `user root` only matters when the test runs as root: Mosquitto would otherwise switch
    // to the `mosquitto` user, which cannot write the scratch folder.
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nuser root\nlog_dest stdout\n",
            server.port(),
            server.dir().display()
        ),
    )
    .unwrap();
    server.arg("-c").arg(conf.display().to_string());
    start(&mut server, "Mosquitto").await;
    let b = Broker {
        yaml: mqtt_persistent_yaml,
        ..Broker::mqtt().at(&server.addr())
    };
    restart_under_load(&mut server, &b, "", Stop::Terminate).await;
}

#[tokio::test]
async fn rabbitmq_restarts_under_load() {
    let Some(mut server) = PrivateServer::find("RabbitMQ", "rabbitmq-server") else {
        return;
    };
    // Distribution packages install a wrapper that switches to the `rabbitmq` user; the
    // start script it runs sits next to it.
    let found = server.program_path().to_path_buf();
    if let Ok(real) = std::fs::canonicalize(&found)
        && real
            .file_name()
            .is_some_and(|f| f == "rabbitmq-script-wrapper")
    {
        server.program(real.with_file_name("rabbitmq-server"));
    }
    let dir = server.dir().to_path_buf();
    let port = server.port();
    let dist_port = tandem_testkit::proxy::quiet_port();
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
    )
    .unwrap();
    std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
    std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    server
        .env("HOME", path(""))
        .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
        .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
        .env("RABBITMQ_NODENAME", format!("tandem-test-{port}@localhost"))
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
        .env("RABBITMQ_LOG_BASE", path("log"))
        .env("RABBITMQ_PID_FILE", path("rabbitmq.pid"))
        .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    start(&mut server, "RabbitMQ").await;
    let b = Broker::rabbitmq().at(&server.addr());
    let durable =
        meta("durable", "true") + &meta("deletedWhenUnused", "false") + &meta("deliveryMode", "2");
    let b = Broker {
        wait: Duration::from_secs(30),
        ..b
    };
    restart_under_load(&mut server, &b, &durable, Stop::Kill).await;
}

#[tokio::test]
async fn kafka_restarts_under_load() {
    let skip = |why: String| {
        if tandem_testkit::services::required() {
            panic!("{why} and TANDEM_REQUIRE_SERVICES=1");
        }
        eprintln!("skipping: {why}");
    };
    let tansu = match kafka::binary() {
        Ok(b) => b,
        Err(why) => return skip(format!("no Kafka-compatible broker ({why})")),
    };
    let (program, args) = match kafka::s3_server() {
        Ok(found) => found,
        Err(why) => return skip(format!("no S3-compatible store for tansu ({why})")),
    };
    // The object store that holds tansu's data; it keeps running while tansu restarts.
    let mut store = PrivateServer::new("S3 store", program);
    let store_port = store.port();
    for a in args {
        store.arg(a);
    }
    store
        .arg("-H")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(store_port.to_string());
    start(&mut store, "S3 store (moto_server)").await;
    if let Err(e) = kafka::s3_create_bucket(&store.addr()).await {
        panic!("{e}; store log:\n{}", store.log());
    }

    let mut server = PrivateServer::new("tansu", tansu);
    let listener = format!("tcp://{}", server.addr());
    server
        .arg("broker")
        .arg("--listener-url")
        .arg(listener.clone())
        .arg("--advertised-listener-url")
        .arg(listener)
        .arg("--storage-engine")
        .arg(format!("s3://{}/", kafka::S3_BUCKET));
    for (k, v) in kafka::s3_env(&store.addr()) {
        server.env(k, v);
    }
    start(&mut server, "tansu").await;
    let b = Broker::kafka(&server.addr());
    restart_under_load(&mut server, &b, "", Stop::Kill).await;
}
