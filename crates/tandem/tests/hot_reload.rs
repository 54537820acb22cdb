//! End-to-end: hot reload of resource files through the real binary. Component files added,
//! changed and removed under `--resources-path` take effect without a restart; a file that
//! no longer parses leaves the running components alone; subscriptions follow their pub/sub
//! component; Subscription files added, changed and removed start, move and stop
//! subscriptions; `HotReload` turned off in the Configuration keeps the start-up set.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, component_names, get_state as get, sqlite_store, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::Sidecar;
use tandem_testkit::subscriber::Subscriber;

const WAIT: Duration = Duration::from_secs(15);

fn resources(sc: &Sidecar) -> std::path::PathBuf {
    sc.work_dir().join("resources")
}

/// Writes a file the way editors do: a temporary file renamed over the old one.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

async fn save(sc: &Sidecar, store: &str, key: &str, value: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/state/{store}")))
        .json(&json!([{"key": key, "value": value}]))
        .send()
        .await
        .unwrap()
}

/// Polls `check` until it holds, or fails with the sidecar's log.
async fn eventually<F, Fut>(sc: &Sidecar, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; log:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn in_memory(name: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.in-memory\n  version: v1\n"
    )
}

#[tokio::test]
async fn state_stores_are_added_changed_and_removed_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let sc = start(
        tandem()
            .app_id("reload-state")
            .resource("statestore.yaml", &sqlite_store("statestore", &db_a, "")),
    )
    .await;
    let res = resources(&sc);
    assert_eq!(
        save(&sc, "statestore", "k", json!("in-a")).await.status(),
        204
    );
    assert_eq!(save(&sc, "second", "k", json!(1)).await.status(), 400);

    // Added.
    write(&res, "second.yaml", &in_memory("second"));
    eventually(&sc, "the added store to serve", || async {
        save(&sc, "second", "k", json!(2)).await.status() == 204
    })
    .await;
    assert_eq!(component_names(&sc).await, ["second", "statestore"]);
    assert_eq!(get(&sc, "second", "k").await, (200, "2".into()));

    // Changed: the store now reads another database; the unchanged one keeps its data.
    write(
        &res,
        "statestore.yaml",
        &sqlite_store("statestore", &db_b, ""),
    );
    eventually(
        &sc,
        "the changed store to serve the new database",
        || async { get(&sc, "statestore", "k").await.0 == 204 },
    )
    .await;
    assert_eq!(
        save(&sc, "statestore", "k", json!("in-b")).await.status(),
        204
    );
    assert_eq!(get(&sc, "second", "k").await, (200, "2".into()));

    // A broken file: reported, nothing changes.
    write(
        &res,
        "broken.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [\n",
    );
    eventually(&sc, "the broken file to be reported", || async {
        sc.log().contains("cannot be loaded")
    })
    .await;
    assert_eq!(get(&sc, "statestore", "k").await, (200, "\"in-b\"".into()));
    std::fs::remove_file(res.join("broken.yaml")).unwrap();

    // A definition that fails to build keeps the previous one.
    write(
        &res,
        "second.yaml",
        &in_memory("second").replace("state.in-memory", "state.nosuchstore"),
    );
    eventually(&sc, "the failed update to be reported", || async {
        sc.log().contains("state.nosuchstore")
    })
    .await;
    assert_eq!(get(&sc, "second", "k").await, (200, "2".into()));

    // Removed.
    std::fs::remove_file(res.join("second.yaml")).unwrap();
    eventually(&sc, "the removed store to go", || async {
        save(&sc, "second", "k", json!(3)).await.status() == 400
    })
    .await;
    assert_eq!(component_names(&sc).await, ["statestore"]);
    // The first database still holds what was written before the change.
    let sc2 = start(
        tandem()
            .app_id("reload-state")
            .resource("statestore.yaml", &sqlite_store("statestore", &db_a, "")),
    )
    .await;
    assert_eq!(get(&sc2, "statestore", "k").await, (200, "\"in-a\"".into()));
}

fn sqlite_pubsub(path: &Path) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: late\nspec:\n  type: pubsub.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n",
        path.display()
    )
}

async fn publish(sc: &Sidecar, n: u64) -> u16 {
    client()
        .post(sc.url("/v1.0/publish/late/orders"))
        .json(&json!({"n": n}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn subscriptions_follow_their_pubsub_component() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(json!([
        {"pubsubname": "late", "topic": "orders", "route": "/orders"}
    ]))
    .await;
    let sc = start(
        tandem()
            .app_id("reload-pubsub")
            .resource("state.yaml", &in_memory("statestore"))
            .app_port(sub.port),
    )
    .await;
    let res = resources(&sc);
    assert_eq!(publish(&sc, 0).await, 400);

    // The pub/sub appears: publishing works and the app's subscription starts on it.
    write(
        &res,
        "late.yaml",
        &sqlite_pubsub(&dir.path().join("one.db")),
    );
    eventually(
        &sc,
        "the subscription to start on the added pub/sub",
        || async { sc.log().contains("subscribed") },
    )
    .await;
    assert_eq!(publish(&sc, 1).await, 204);
    sub.wait_for(WAIT, "the first delivery", |r| {
        r.iter().any(|m| m.body["data"]["n"] == 1)
    })
    .await;

    // It changes (another database): the subscription moves to the new component.
    write(
        &res,
        "late.yaml",
        &sqlite_pubsub(&dir.path().join("two.db")),
    );
    // Messages published before a subscription exists are not for it: wait until the
    // subscription is attached to the new component (its second "subscribed" line).
    eventually(
        &sc,
        "the subscription to move to the rebuilt pub/sub",
        || async { sc.log().matches("subscribed").count() >= 2 },
    )
    .await;
    assert_eq!(publish(&sc, 2).await, 204);
    sub.wait_for(WAIT, "a delivery from the changed pub/sub", |r| {
        r.iter().any(|m| m.body["data"]["n"] == 2)
    })
    .await;

    // It goes away.
    std::fs::remove_file(res.join("late.yaml")).unwrap();
    eventually(&sc, "the pub/sub to be removed", || async {
        publish(&sc, 3).await == 400
    })
    .await;
}

#[tokio::test]
async fn hot_reload_can_be_turned_off() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec:\n  features:\n  - name: HotReload\n    enabled: false\n",
    )
    .unwrap();
    let sc = start(
        tandem()
            .app_id("reload-off")
            .resource("state.yaml", &in_memory("statestore"))
            .arg("--config")
            .arg(config.path().display().to_string()),
    )
    .await;
    write(&resources(&sc), "second.yaml", &in_memory("second"));
    // Long enough for several scans had reloading been on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(save(&sc, "second", "k", json!(1)).await.status(), 400);
    assert_eq!(component_names(&sc).await, ["statestore"]);
}

fn subscription(route: &str) -> String {
    format!(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders-sub\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    default: {route}\n"
    )
}

async fn listed_routes(sc: &Sidecar) -> Vec<String> {
    let m: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    m["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn subscription_files_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(json!([])).await;
    let pubsub = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n",
        dir.path().join("ps.db").display()
    );
    let sc = start(
        tandem()
            .app_id("reload-subs")
            .resource("pubsub.yaml", &pubsub)
            .app_port(sub.port),
    )
    .await;
    let res = resources(&sc);
    let publish = |n: u64| {
        let url = sc.url("/v1.0/publish/pubsub/orders");
        async move {
            client()
                .post(url)
                .json(&json!({"n": n}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // Added: the subscription starts.
    write(&res, "sub.yaml", &subscription("/first"));
    eventually(&sc, "the added subscription to be listed", || async {
        listed_routes(&sc).await == ["/first"]
    })
    .await;
    eventually(&sc, "the added subscription to start", || async {
        sc.log().matches("subscribed").count() >= 1
    })
    .await;
    assert_eq!(publish(1).await, 204);
    sub.wait_for(WAIT, "a delivery to /first", |r| {
        r.iter()
            .any(|m| m.path == "/first" && m.body["data"]["n"] == 1)
    })
    .await;

    // Changed: deliveries go to the new route.
    write(&res, "sub.yaml", &subscription("/second"));
    eventually(&sc, "the changed subscription to be listed", || async {
        listed_routes(&sc).await == ["/second"]
    })
    .await;
    assert_eq!(publish(2).await, 204);
    sub.wait_for(WAIT, "a delivery to /second", |r| {
        r.iter()
            .any(|m| m.path == "/second" && m.body["data"]["n"] == 2)
    })
    .await;
    assert!(
        !sub.received_on("/first")
            .iter()
            .any(|m| m.body["data"]["n"] == 2),
        "the old route still received"
    );

    // Removed: nothing is listed any more.
    std::fs::remove_file(res.join("sub.yaml")).unwrap();
    eventually(&sc, "the removed subscription to go", || async {
        listed_routes(&sc).await.is_empty()
    })
    .await;
}
