//! Kubernetes mode against an in-memory Kubernetes API (kmock's emulator, see
//! `tandem_testkit::kmock`): the real binary with `--mode kubernetes` and a kubeconfig pointing
//! at the emulator reads its Components, Configuration and Secrets from the API and follows
//! changes; `tandem operator` keeps the `<app-id>-dapr` Services. No real cluster is involved:
//! the emulator does no admission, validation, conversion or garbage collection.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{client, component_names, get_state as get, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::kmock::KubeApi;

const WAIT: Duration = Duration::from_secs(30);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn component(name: &str, type_name: &str, metadata: Value, scopes: Option<Value>) -> Value {
    let mut c = json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": type_name, "version": "v1", "metadata": metadata},
    });
    if let Some(s) = scopes {
        c["scopes"] = s;
    }
    c
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(b64(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": data,
    })
}

async fn save(sc: &tandem_testkit::Sidecar, store: &str, key: &str, value: &str) -> u16 {
    client()
        .post(sc.url(&format!("/v1.0/state/{store}")))
        .json(&json!([{"key": key, "value": value}]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` until it holds, failing with `what` and the sidecar log after [`WAIT`].
async fn eventually<F, Fut>(sc: &tandem_testkit::Sidecar, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", sc.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sidecar_reads_resources_from_the_api_and_follows_changes() {
    let Some(kube) = KubeApi::start().await else {
        return;
    };
    let db = kube.dir().join("state.db");
    kube.create(component("statestore", "state.in-memory", json!([]), None))
        .await;
    kube.create(component(
        "elsewhere",
        "state.in-memory",
        json!([]),
        Some(json!(["other-app"])),
    ))
    .await;
    kube.create(secret("sqlite", &[("path", &db.display().to_string())]))
        .await;
    kube.create(secret("db", &[("user", "admin"), ("password", "s3cret")]))
        .await;
    kube.create(secret("hidden", &[("x", "y")])).await;
    // secretKeyRef without auth.secretStore: resolved from the built-in kubernetes store.
    kube.create(component(
        "sqlstore",
        "state.sqlite",
        json!([{"name": "connectionString", "secretKeyRef": {"name": "sqlite", "key": "path"}}]),
        None,
    ))
    .await;
    kube.create(json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "appconfig", "namespace": "default"},
        "spec": {"secrets": {"scopes": [
            {"storeName": "kubernetes", "defaultAccess": "deny", "allowedSecrets": ["db", "sqlite"]}
        ]}},
    }))
    .await;

    let sc = start(
        tandem()
            .app_id("k8s-app")
            .arg("--mode")
            .arg("kubernetes")
            .arg("--config")
            .arg("appconfig")
            .env("KUBECONFIG", &kube.kubeconfig.display().to_string())
            .env("NAMESPACE", "default"),
    )
    .await;

    // Loaded from the API; the component scoped to another app is not.
    assert_eq!(
        component_names(&sc).await,
        ["kubernetes", "sqlstore", "statestore"],
        "log:\n{}",
        sc.log()
    );
    assert_eq!(save(&sc, "statestore", "k1", "v1").await, 204);
    assert_eq!(get(&sc, "statestore", "k1").await, (200, "\"v1\"".into()));
    // The sqlite store got its path from the Secret.
    assert_eq!(save(&sc, "sqlstore", "k", "from-secret").await, 204);
    assert_eq!(
        get(&sc, "sqlstore", "k").await,
        (200, "\"from-secret\"".into())
    );
    assert!(
        db.exists(),
        "the database is at the path held by the Secret"
    );

    // The secrets API over secretstores.kubernetes, under the Configuration's secret scopes.
    let s: Value = client()
        .get(sc.url("/v1.0/secrets/kubernetes/db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s, json!({"user": "admin", "password": "s3cret"}));
    let denied = client()
        .get(sc.url("/v1.0/secrets/kubernetes/hidden"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        denied.status().as_u16(),
        403,
        "the Configuration's scopes apply"
    );
    let bulk: Value = client()
        .get(sc.url("/v1.0/secrets/kubernetes/bulk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bulk["db"], json!({"user": "admin", "password": "s3cret"}));
    assert!(
        bulk.get("hidden").is_none(),
        "bulk answers only allowed secrets: {bulk}"
    );

    // Added while running.
    let late = component("late", "state.in-memory", json!([]), None);
    kube.create(late.clone()).await;
    eventually(&sc, "component 'late' was not added", || async {
        save(&sc, "late", "a", "b").await == 204
    })
    .await;
    assert_eq!(get(&sc, "late", "a").await, (200, "\"b\"".into()));

    // Changed while running: the in-memory store is rebuilt, so its data is gone.
    let statestore = component("statestore", "state.in-memory", json!([]), None);
    kube.patch(
        &statestore,
        json!({"spec": {"metadata": [{"name": "keyPrefix", "value": "name"}]}}),
    )
    .await;
    eventually(&sc, "component 'statestore' was not rebuilt", || async {
        get(&sc, "statestore", "k1").await.0 == 204
    })
    .await;
    assert_eq!(save(&sc, "statestore", "k2", "v2").await, 204);

    // Deleted while running.
    kube.delete(&late).await;
    eventually(&sc, "component 'late' was not removed", || async {
        save(&sc, "late", "a", "b").await == 400
    })
    .await;
    let names = component_names(&sc).await;
    assert!(!names.contains(&"late".to_owned()), "{names:?}");

    // A scoped component added for another app stays out; one for this app comes in.
    kube.create(component(
        "scoped-other",
        "state.in-memory",
        json!([]),
        Some(json!(["other-app"])),
    ))
    .await;
    kube.create(component(
        "scoped-mine",
        "state.in-memory",
        json!([]),
        Some(json!(["k8s-app"])),
    ))
    .await;
    eventually(&sc, "component 'scoped-mine' was not added", || async {
        save(&sc, "scoped-mine", "a", "b").await == 204
    })
    .await;
    assert_eq!(save(&sc, "scoped-other", "a", "b").await, 400);
    assert_eq!(
        component_names(&sc).await,
        ["kubernetes", "scoped-mine", "sqlstore", "statestore"]
    );
}

#[tokio::test]
async fn redis_component_from_the_api() {
    if !tandem_testkit::services::require("redis", "127.0.0.1:6379") {
        return;
    }
    let Some(kube) = KubeApi::start().await else {
        return;
    };
    kube.create(secret("redis", &[("host", "127.0.0.1:6379")]))
        .await;
    kube.create(component(
        "cache",
        "state.redis",
        json!([{"name": "redisHost", "secretKeyRef": {"name": "redis", "key": "host"}}]),
        None,
    ))
    .await;
    let sc = start(
        tandem()
            .app_id(&format!("k8s-redis-{}", std::process::id()))
            .arg("--mode")
            .arg("kubernetes")
            .env("KUBECONFIG", &kube.kubeconfig.display().to_string())
            .env("NAMESPACE", "default"),
    )
    .await;
    assert_eq!(save(&sc, "cache", "k", "redis-value").await, 204);
    assert_eq!(
        get(&sc, "cache", "k").await,
        (200, "\"redis-value\"".into())
    );
}

#[tokio::test]
async fn builtin_secret_store_can_be_disabled() {
    let Some(kube) = KubeApi::start().await else {
        return;
    };
    kube.create(component("statestore", "state.in-memory", json!([]), None))
        .await;
    let sc = start(
        tandem()
            .app_id("k8s-nosecrets")
            .arg("--mode")
            .arg("kubernetes")
            .arg("--disable-builtin-k8s-secret-store")
            .env("KUBECONFIG", &kube.kubeconfig.display().to_string())
            .env("NAMESPACE", "default"),
    )
    .await;
    assert_eq!(component_names(&sc).await, ["statestore"]);
}

/// The operator as a child process (killed when dropped) and its log file.
struct Operator {
    _child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn deployment(name: &str, annotations: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
        },
    })
}

async fn wait_service(
    kube: &KubeApi,
    op: &Operator,
    name: &str,
    check: impl Fn(&Option<Value>) -> bool,
) -> Option<Value> {
    let path = format!("/api/v1/namespaces/default/services/{name}");
    let deadline = Instant::now() + WAIT;
    loop {
        let s = kube.get(&path).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "service {name}: condition not met; last {s:?}; operator log:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operator_keeps_the_app_services() {
    let Some(kube) = KubeApi::start().await else {
        return;
    };
    let log = kube.dir().join("operator.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("operator")
        .arg("--kubeconfig")
        .arg(&kube.kubeconfig)
        .arg("--watch-namespace")
        .arg("default")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem operator");
    let op = Operator { _child: child, log };

    let orders = deployment(
        "orders",
        json!({"dapr.io/enabled": "true", "dapr.io/app-id": "orders-app", "dapr.io/metrics-port": "9091"}),
        json!({"app": "orders"}),
    );
    kube.create(orders.clone()).await;
    let plain = deployment("plain", json!({}), json!({"app": "plain"}));
    kube.create(plain).await;

    let svc = wait_service(&kube, &op, "orders-app-dapr", Option::is_some)
        .await
        .unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["selector"], json!({"app": "orders"}));
    assert_eq!(svc["metadata"]["labels"]["dapr.io/enabled"], "true");
    assert_eq!(
        svc["metadata"]["annotations"]["dapr.io/app-id"],
        "orders-app"
    );
    assert_eq!(svc["metadata"]["annotations"]["prometheus.io/port"], "9091");
    let ports: Vec<(String, i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dapr-http".to_owned(), 80, 3500),
            ("dapr-grpc".to_owned(), 50001, 50001),
            ("dapr-internal".to_owned(), 50002, 50002),
            ("dapr-metrics".to_owned(), 9091, 9091),
        ]
    );
    let owner = &svc["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["name"], "orders");
    assert_eq!(owner["uid"], "uid-orders");
    assert_eq!(owner["controller"], true);

    // Drift is repaired.
    kube.patch(&svc, json!({"spec": {"ports": [{"name": "x", "port": 1}]}}))
        .await;
    wait_service(&kube, &op, "orders-app-dapr", |s| {
        s.as_ref()
            .is_some_and(|s| s["spec"]["ports"].as_array().is_some_and(|p| p.len() == 4))
    })
    .await;

    // A changed selector follows the workload.
    kube.patch(
        &orders,
        json!({"spec": {"selector": {"matchLabels": {"app": null, "tier": "orders"}}}}),
    )
    .await;
    wait_service(&kube, &op, "orders-app-dapr", |s| {
        s.as_ref()
            .is_some_and(|s| s["spec"]["selector"] == json!({"tier": "orders"}))
    })
    .await;

    // A StatefulSet is handled too.
    let mut ledger = deployment(
        "ledger",
        json!({"dapr.io/enabled": "true"}),
        json!({"app": "ledger"}),
    );
    ledger["kind"] = json!("StatefulSet");
    kube.create(ledger).await;
    let svc = wait_service(&kube, &op, "ledger-dapr", Option::is_some)
        .await
        .unwrap();
    assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");

    // Dapr turned off: the Service goes.
    kube.patch(
        &orders,
        json!({"spec": {"template": {"metadata": {"annotations": {"dapr.io/enabled": "false"}}}}}),
    )
    .await;
    wait_service(&kube, &op, "orders-app-dapr", Option::is_none).await;

    // A workload without the annotation never got one.
    assert!(
        kube.get("/api/v1/namespaces/default/services/plain-dapr")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn invocation_resolves_apps_through_kubernetes_name_resolution() {
    let Some(kube) = KubeApi::start().await else {
        return;
    };
    // No cluster DNS here: the Configuration's template points `<app-id>` at this machine and
    // its `port` at b's internal port (in a cluster: `<app-id>-dapr.<ns>.svc.cluster.local:50002`).
    let internal = tandem_testkit::proxy::free_port();
    kube.create(json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "nr", "namespace": "default"},
        "spec": {"nameResolution": {"component": "kubernetes", "configuration": {
            "template": "127.0.0.1:{{.Port}}", "port": internal,
        }}},
    }))
    .await;
    let app_b = tandem_testkit::mock_app::MockApp::start("b").await;
    let kubeconfig = kube.kubeconfig.display().to_string();
    let _b = start(
        tandem()
            .app_id("b")
            .app_port(app_b.port())
            .arg("--mode")
            .arg("kubernetes")
            .arg("--dapr-internal-grpc-port")
            .arg(internal.to_string())
            .env("KUBECONFIG", &kubeconfig)
            .env("NAMESPACE", "default"),
    )
    .await;
    let a = start(
        tandem()
            .app_id("a")
            .arg("--mode")
            .arg("kubernetes")
            .arg("--config")
            .arg("nr")
            .env("KUBECONFIG", &kubeconfig)
            .env("NAMESPACE", "default"),
    )
    .await;
    let resp = client()
        .post(a.url("/v1.0/invoke/b/method/hello"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", a.log());
    assert_eq!(resp.headers()["x-mock-app"], "b");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
}
