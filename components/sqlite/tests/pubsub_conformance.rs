//! `pubsub.sqlite` against the pub/sub conformance suite (each case on a fresh database file),
//! plus what only a shared, durable database can do: several instances (processes) on one
//! file, reopening, crashed lease holders, `kill -9`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tandem_components::Result;
use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, recv_n, recv_n_within, subscribe,
    subscribe_req,
};
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use tandem_sqlite::SqlitePubSub;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Set in the child process of `kill_9_of_publisher_and_lease_holder` only.
const CHILD_DB: &str = "TANDEM_PUBSUB_KILL_CHILD_DB";

/// The component plus its temporary folder, removed when the case drops the component.
struct OnTempFile {
    pubsub: SqlitePubSub,
    _dir: TempDir,
}

// Plain delegation, so that the component's own bulk publish is the one under test.
#[async_trait]
impl PubSub for OnTempFile {
    fn features(&self) -> &'static [PubSubFeature] {
        self.pubsub.features()
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        self.pubsub.publish(req).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        self.pubsub.bulk_publish(reqs).await
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        self.pubsub.subscribe(req, handler).await
    }
}

async fn build() -> Option<Arc<dyn PubSub>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let pubsub = open(&dir.path().join("pubsub.db"), &[]).await;
    Some(Arc::new(OnTempFile { pubsub, _dir: dir }))
}

tandem_components::pubsub_conformance!(build());

/// An instance on `path`, as another sidecar process would open it.
async fn open(path: &Path, extra: &[(&str, &str)]) -> SqlitePubSub {
    let mut meta = tandem_components::Metadata::new("pubsub", "test")
        .with("connectionString", path.to_str().expect("utf-8 path"));
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    SqlitePubSub::build(&meta).await.expect("build")
}

fn db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    (dir, path)
}

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

/// One subscriber with one message in flight sees the topic in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_with_one_in_flight() {
    let (_dir, path) = db();
    let ps = open(&path, &[]).await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, "orders", "fifo", 1, h).await;
    let sent: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for chunk in sent.chunks(10) {
        let reqs = chunk
            .iter()
            .map(|d| PublishRequest {
                topic: "orders".into(),
                data: d.clone().into(),
                ..Default::default()
            })
            .collect();
        assert!(ps.bulk_publish(reqs).await.iter().all(|r| r.is_ok()));
    }
    let got: Vec<String> = recv_n(&mut rx, 100).await.iter().map(text).collect();
    assert_eq!(got, sent);
    sub.close().await;
}

/// A group gets what is published after it first subscribed, including while none of its
/// members runs, and nothing from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_starts_at_its_first_subscription_and_is_remembered() {
    let (_dir, path) = db();
    let ps = open(&path, &[]).await;
    publish(&ps, "t", "before the group").await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, "t", "g", 4, h).await;
    publish(&ps, "t", "first").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "first");
    sub.close().await;
    publish(&ps, "t", "while away").await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, "t", "g", 4, h).await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "while away");
    assert_quiet(&mut rx, "nothing from before the group existed").await;
    sub.close().await;
}

/// Two instances on one file, one group: each message handled once, by either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_compete_within_a_group() {
    let (_dir, path) = db();
    let a = open(&path, &[]).await;
    let b = open(&path, &[]).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(char, Message)>();
    let member = |who: char| {
        let tx = tx.clone();
        handler(move |msg| {
            let _ = tx.send((who, msg));
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Delivery::Ack
            }
        })
    };
    let sa = subscribe(&a, "jobs", "workers", 1, member('a')).await;
    let sb = subscribe(&b, "jobs", "workers", 1, member('b')).await;
    const N: usize = 100;
    for i in 0..N {
        // Both instances publish.
        let from = if i % 2 == 0 { &a } else { &b };
        publish(from, "jobs", format!("job-{i}")).await;
    }
    let mut seen = std::collections::HashSet::new();
    let (mut by_a, mut by_b) = (0, 0);
    let until = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < N {
        let (who, msg) = tokio::time::timeout_at(until, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} arrived", seen.len()))
            .unwrap();
        assert!(seen.insert(text(&msg)), "{} handled twice", text(&msg));
        if who == 'a' { by_a += 1 } else { by_b += 1 }
    }
    if let Ok(Some((who, msg))) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
    {
        panic!("{who} handled {} again", text(&msg));
    }
    assert!(
        by_a > 0 && by_b > 0,
        "both instances get a share: a={by_a} b={by_b}"
    );
    sa.close().await;
    sb.close().await;
}

/// Two instances, two groups: each group gets every message, whichever instance published it;
/// an idle subscriber of one instance is woken by a publish of the other (no polling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fan_out_across_groups() {
    let (_dir, path) = db();
    let a = open(&path, &[]).await;
    let b = open(&path, &[]).await;
    let (ha, mut rxa) = collector(Delivery::Ack);
    let (hb, mut rxb) = collector(Delivery::Ack);
    let sa = subscribe(&a, "news", "readers-a", 4, ha).await;
    let sb = subscribe(&b, "news", "readers-b", 4, hb).await;
    // Both subscribers are idle now; only a wake-up can bring them the next message.
    publish(&a, "news", "from a").await;
    let started = Instant::now();
    assert_eq!(text(&recv_n(&mut rxb, 1).await[0]), "from a");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken across instances promptly: {:?}",
        started.elapsed()
    );
    publish(&b, "news", "from b").await;
    let mut got_a: Vec<String> = recv_n(&mut rxa, 2).await.iter().map(text).collect();
    got_a.sort();
    assert_eq!(got_a, ["from a", "from b"]);
    assert_eq!(text(&recv_n(&mut rxb, 1).await[0]), "from b");
    assert_quiet(&mut rxa, "group a: each once").await;
    assert_quiet(&mut rxb, "group b: each once").await;
    sa.close().await;
    sb.close().await;
}

/// Published-but-unconsumed messages are delivered after the component is dropped and the
/// file reopened; acknowledged ones are not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_across_reopen() {
    let (_dir, path) = db();
    {
        let ps = open(&path, &[]).await;
        let (h, mut rx) = collector(Delivery::Ack);
        let sub = subscribe(&ps, "ledger", "book", 4, h).await;
        for i in 0..3 {
            publish(&ps, "ledger", format!("acked-{i}")).await;
        }
        recv_n(&mut rx, 3).await;
        sub.close().await;
        for i in 0..5 {
            publish(&ps, "ledger", format!("kept-{i}")).await;
        }
    }
    let ps = open(&path, &[]).await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, "ledger", "book", 1, h).await;
    let got: Vec<String> = recv_n(&mut rx, 5).await.iter().map(text).collect();
    assert_eq!(got, (0..5).map(|i| format!("kept-{i}")).collect::<Vec<_>>());
    assert_quiet(&mut rx, "acknowledged messages stay acknowledged").await;
    sub.close().await;
}

/// A handler slower than `processingTimeout` keeps its lease (it is renewed): the other
/// instance of the group does not get the message meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_keeps_its_lease() {
    let (_dir, path) = db();
    let short = [("processingTimeout", "300ms")];
    let a = open(&path, &short).await;
    let b = open(&path, &short).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = {
        let tx = tx.clone();
        handler(move |msg| {
            let _ = tx.send(msg);
            async {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                Delivery::Ack
            }
        })
    };
    let sa = subscribe(&a, "slow", "g", 1, slow).await;
    publish(&a, "slow", "long job").await;
    recv_n(&mut rx, 1).await;
    let (hb, mut rxb) = collector(Delivery::Ack);
    let sb = subscribe(&b, "slow", "g", 1, hb).await;
    sa.close().await;
    assert_quiet(&mut rxb, "renewed lease, then acknowledged").await;
    sb.close().await;
}

/// A lease whose holder dies (its runtime is torn down mid-handler, nothing runs any more) is
/// delivered to another instance once `processingTimeout` has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_holder_lease_runs_out() {
    let (_dir, path) = db();
    let short = [("processingTimeout", "1s")];
    let (got_tx, got_rx) = std::sync::mpsc::channel::<Instant>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let kept = rt.block_on(async move {
            let a = open(&holder_path, &short).await;
            let never = handler(move |_msg| {
                let _ = got_tx.send(Instant::now());
                std::future::pending::<Delivery>()
            });
            let sub = subscribe(&a, "work", "crew", 1, never).await;
            let _ = ready_tx.send(());
            tokio::task::spawn_blocking(move || kill_rx.recv())
                .await
                .unwrap()
                .unwrap();
            (a, sub)
        });
        // The crash: every task of the holder stops where it is; no destructor runs.
        rt.shutdown_background();
        std::mem::forget(kept);
    });
    ready_rx.await.unwrap();
    let b = open(&path, &short).await;
    publish(&b, "work", "orphan").await;
    let leased_at = tokio::task::spawn_blocking(move || got_rx.recv_timeout(DEADLINE))
        .await
        .unwrap()
        .expect("the holder got the message");
    kill_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || holder.join())
        .await
        .unwrap()
        .unwrap();

    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&b, "work", "crew", 1, h).await;
    let got = recv_n_within(&mut rx, 1, Duration::from_secs(10)).await;
    let after = leased_at.elapsed();
    assert_eq!(text(&got[0]), "orphan");
    assert!(
        after >= Duration::from_millis(800),
        "redelivered only after processingTimeout, got it after {after:?}"
    );
    assert_quiet(&mut rx, "delivered once more, then acknowledged").await;
    sub.close().await;
}

/// Real processes: a child subscribes (holding its message forever without answering) and
/// publishes, then is killed with SIGKILL. What it published is there; what it held is
/// redelivered after `processingTimeout`. The child is woken by our publish through its bell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_publisher_and_lease_holder() {
    let (_dir, path) = db();
    let short = [("processingTimeout", "1s")];
    let ps = open(&path, &short).await;
    // Record the group that will read the child's messages.
    subscribe(&ps, "durable", "readers", 1, collector(Delivery::Ack).0)
        .await
        .close()
        .await;

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the test binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = async |marker: &str| {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(until, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("child never printed {marker}"))
                .unwrap()
                .unwrap_or_else(|| panic!("child exited before {marker}"));
            if line.contains(marker) {
                return;
            }
        }
    };
    wait_for("CHILD-READY").await;
    publish(&ps, "held", "held-1").await;
    wait_for("CHILD-GOT held-1").await;
    let leased_at = Instant::now();
    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();

    let (h, mut rx) = collector(Delivery::Ack);
    let durable = subscribe(&ps, "durable", "readers", 1, h).await;
    let got: Vec<String> = recv_n(&mut rx, 3).await.iter().map(text).collect();
    assert_eq!(
        got,
        ["d-0", "d-1", "d-2"],
        "the killed child's publishes are durable"
    );
    durable.close().await;

    let (h, mut rx) = collector(Delivery::Ack);
    let held = subscribe(&ps, "held", "holders", 1, h).await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "held-1");
    assert!(
        leased_at.elapsed() >= Duration::from_millis(700),
        "redelivered only after the lease ran out: {:?}",
        leased_at.elapsed()
    );
    held.close().await;
}

/// The child of `kill_9_of_publisher_and_lease_holder`; does nothing in a normal run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by kill_9_of_publisher_and_lease_holder"]
async fn kill_child() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let ps = open(Path::new(&path), &[("processingTimeout", "1s")]).await;
    let never = handler(|msg| {
        println!("CHILD-GOT {}", text(&msg));
        std::future::pending::<Delivery>()
    });
    let _held = ps
        .subscribe(subscribe_req("held", "holders", 1), never)
        .await
        .unwrap();
    for i in 0..3 {
        publish(&ps, "durable", format!("d-{i}")).await;
    }
    println!("CHILD-READY");
    tokio::time::sleep(Duration::from_secs(60)).await;
}
