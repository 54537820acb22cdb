//! End-to-end: service invocation through the real binary, with in-process mock apps.
//!
//! Local calls (app → its own sidecar → app), calls between sidecars sharing a name-resolution
//! database, round-robin and dead instances, HTTPEndpoint and URL targets, access control,
//! errors and streaming.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_error, assert_silent_callee_fails_the_call, client, start, tandem};
use serde_json::Value;
use tandem_testkit::mock_app::{MockApp, fnv1a};
use tandem_testkit::{Sidecar, SidecarBuilder};

/// A sidecar for `app_id` in front of `app`, registered in the shared database `db`.
fn with_app(app_id: &str, app: &MockApp, db: &Path) -> SidecarBuilder {
    tandem()
        .app_id(app_id)
        .app_port(app.port())
        .name_resolution_db(db)
}

/// Sidecar `b` with its app and sidecar `a` without one, sharing a name-resolution database
/// (kept in the returned folder).
async fn a_and_b() -> (tempfile::TempDir, MockApp, Sidecar, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let app_b = MockApp::start("b").await;
    let b = start(with_app("b", &app_b, &db)).await;
    let a = start(tandem().app_id("a").name_resolution_db(&db)).await;
    (dir, app_b, b, a)
}

/// Sidecar `b` for `app`, with the Configuration at `config` and its metrics on the port
/// returned.
async fn configured_b(app: &MockApp, db: &Path, config: &Path) -> (Sidecar, u16) {
    let metrics_port = tandem_testkit::proxy::free_port();
    let b = start(common::with_metrics(
        with_app("b", app, db)
            .arg("--config")
            .arg(config.display().to_string()),
        metrics_port,
    ))
    .await;
    (b, metrics_port)
}

async fn json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

async fn echo(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200, "echo status");
    json(resp).await
}

#[tokio::test]
async fn local_invocation_url_header_and_basic_forms() {
    let app = MockApp::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(with_app("a", &app, &dir.path().join("nr.db"))).await;
    let c = client();

    // URL form: path, query and headers reach the app; the identity headers are set.
    let resp = c
        .get(sc.url("/v1.0/invoke/a/method/orders/1?x=1&y=two"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-mock-app"], "a");
    let v = echo(resp).await;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/orders/1");
    assert_eq!(v["query"], "x=1&y=two");
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    // The sidecar continues the caller's trace with a span of its own.
    common::assert_child_of(
        &h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    assert_eq!(h["dapr-caller-app-id"], "a");
    assert_eq!(h["dapr-callee-app-id"], "a");
    assert!(h.get("dapr-app-id").is_none());

    // Header form: the whole path is the method, the header does not reach the app.
    let v = echo(
        c.post(sc.url("/orders/2?z=3"))
            .header("dapr-app-id", "a")
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/orders/2");
    assert_eq!(v["query"], "z=3");
    assert_eq!(v["body"], "hello");
    assert_eq!(v["headers"]["content-type"], "text/plain");
    assert!(v["headers"].get("dapr-app-id").is_none());

    // Basic-auth form (http://dapr-app-id:a@localhost:3500/...).
    let v = echo(
        c.delete(sc.url("/carts/9"))
            .basic_auth("dapr-app-id", Some("a"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["path"], "/carts/9");

    // Any verb; a method path that needs cleaning is cleaned like daprd does.
    for verb in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"] {
        let method = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
        let v = echo(
            c.request(method, sc.url("/v1.0/invoke/a/method/x//y/./z/"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(v["method"], verb);
        assert_eq!(v["path"], "/x/y/z");
    }
    // Over h2c too (the app channel still speaks HTTP/1.1 to the app).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(sc.url("/v1.0/invoke/a/method/h2?v=2"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v = echo(resp).await;
    assert_eq!(v["body"], "over h2");
    assert_eq!(v["query"], "v=2");
    let resp = c
        .head(sc.url("/v1.0/invoke/a/method/h"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mock-app"], "a");
}

#[tokio::test]
async fn status_headers_and_bodies_pass_through() {
    let app = MockApp::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(with_app("a", &app, &dir.path().join("nr.db"))).await;
    let c = client();

    // The app's status and headers come back verbatim, minus hop-by-hop ones.
    let resp = c
        .post(sc.url("/v1.0/invoke/a/method/teapot"))
        .header("mock-status", "418")
        .header("mock-set-header", "x-answer: 42")
        .header("mock-set-header", "x-hidden: 1")
        .header("mock-set-header", "connection: x-hidden")
        .header("mock-set-header", "keep-alive: timeout=9")
        .header("mock-set-header", "proxy-authenticate: Basic")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-answer"], "42");
    assert_eq!(resp.headers()["content-type"], "application/json");
    for gone in ["x-hidden", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.headers().get(gone).is_none(),
            "{gone}: {:?}",
            resp.headers()
        );
    }
    assert_eq!(json(resp).await["path"], "/teapot");

    // Hop-by-hop request headers do not reach the app either.
    let v = echo(
        c.get(sc.url("/v1.0/invoke/a/method/hop"))
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic eA==")
            .header("dapr-api-token", "not-for-the-app")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "dapr-api-token",
        "connection",
    ] {
        assert!(v["headers"].get(gone).is_none(), "{gone}: {}", v["headers"]);
    }

    // A 1 MiB body goes through both ways, streamed.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let v = echo(
        c.put(sc.url("/v1.0/invoke/a/method/upload"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["body_len"], big.len());
    assert_eq!(v["body_hash"], fnv1a(&big));
    let resp = c
        .post(sc.url("/v1.0/invoke/a/method/raw"))
        .header("mock-mode", "raw")
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert!(resp.bytes().await.unwrap() == big, "raw echo differs");
}

#[tokio::test]
async fn errors_unknown_app_bad_target_and_no_app_channel() {
    let dir = tempfile::tempdir().unwrap();
    let sc = start(
        tandem()
            .app_id("lonely")
            .name_resolution_db(dir.path().join("nr.db")),
    )
    .await;
    let c = client();
    let resp = c
        .get(sc.url("/v1.0/invoke/nope/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "failed to invoke, id: nope, err: no host found",
    )
    .await;
    let resp = c
        .get(sc.url("/v1.0/invoke/a.b.c/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_DIRECT_INVOKE", "invalid app id a.b.c").await;
    // Its own app-id without --app-port: there is no app to call.
    let resp = c
        .post(sc.url("/v1.0/invoke/lonely/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "failed to invoke, id: lonely, err: cannot invoke local endpoint: app channel not initialized",
    )
    .await;
    let resp = c
        .get(sc.url("/v1.0/invoke/https%3A%2F%2Fexample.com/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "https:// targets are not supported yet",
    )
    .await;
    // No target at all.
    let resp = c.get(sc.url("/orders")).send().await.unwrap();
    assert_error(
        resp,
        404,
        "ERR_DIRECT_INVOKE",
        "failed getting app id either from the URL path or the header dapr-app-id",
    )
    .await;
    // The app is registered but not listening: the callee's app channel error.
    let gone = MockApp::start("gone").await;
    let port = gone.port();
    drop(gone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sc2 = start(
        tandem()
            .app_id("down")
            .app_port(port)
            .name_resolution_db(dir.path().join("nr.db")),
    )
    .await;
    let resp = c
        .get(sc.url("/v1.0/invoke/down/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "failed to invoke, id: down, err: error invoking app channel",
    )
    .await;
    drop(sc2);
}

#[tokio::test]
async fn app_a_to_sidecar_a_to_sidecar_b_to_app_b() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let app_b = MockApp::start("b").await;
    let b = start(with_app("b", &app_b, &db)).await;
    // DAPR_HOST_IP: the caller's address in the forwarding headers (and what it would
    // register; nobody calls `a` here).
    let a = start(
        tandem()
            .app_id("a")
            .name_resolution_db(&db)
            .env("DAPR_HOST_IP", "10.1.2.3"),
    )
    .await;
    assert_ne!(b.internal_port, 0);
    let c = client();

    let resp = c
        .post(a.url("/v1.0/invoke/b/method/api/items?limit=5"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "192.0.2.1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-mock-app"], "b");
    let v = echo(resp).await;
    assert_eq!(v["path"], "/api/items");
    assert_eq!(v["query"], "limit=5");
    assert_eq!(v["body"], r#"{"n":1}"#);
    let h = &v["headers"];
    assert_eq!(h["dapr-caller-app-id"], "a");
    assert_eq!(h["dapr-callee-app-id"], "b");
    assert_eq!(h["dapr-caller-namespace"], "default");
    assert_eq!(h["content-type"], "application/json");
    // The sidecar continues the caller's trace with a span of its own.
    common::assert_child_of(
        &h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    // daprd appends its host's address to X-Forwarded-For and writes Forwarded.
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
    let forwarded = h["forwarded"].as_str().unwrap();
    assert!(
        forwarded.starts_with("for=10.1.2.3;by=10.1.2.3"),
        "{forwarded}"
    );
    assert!(h.get("tandem-caller-trust-domain").is_none());

    // The header form, `appid.namespace`, and the app's status through two sidecars.
    let v = echo(
        c.get(a.url("/ping"))
            .header("dapr-app-id", "b.default")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["path"], "/ping");
    let resp = c
        .get(a.url("/v1.0/invoke/b/method/missing"))
        .header("mock-status", "404")
        .header("mock-set-header", "x-why: nothing here")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-why"], "nothing here");

    // 1 MiB streamed there and back.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let resp = c
        .post(a.url("/v1.0/invoke/b/method/raw"))
        .header("mock-mode", "raw")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == big, "raw echo differs");

    // A namespace nobody registered in.
    let resp = c
        .get(a.url("/v1.0/invoke/b.prod/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "failed to invoke, id: b.prod, err: no host found",
    )
    .await;

    // The internal port refuses calls meant for another app.
    let resp = c
        .get(format!("http://127.0.0.1:{}/x", b.internal_port))
        .header("dapr-callee-app-id", "someone-else")
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        404,
        "ERR_DIRECT_INVOKE",
        "this sidecar serves app id b",
    )
    .await;
    let resp = c
        .get(format!("http://127.0.0.1:{}/x", b.internal_port))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "ERR_DIRECT_INVOKE", "names no target app id").await;
    assert_eq!(
        app_b.invocations(),
        ["POST /api/items", "GET /ping", "GET /missing", "POST /raw"]
    );
}

async fn call_b(c: &reqwest::Client, a: &Sidecar) -> String {
    let resp = c
        .get(a.url("/v1.0/invoke/b/method/who"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let who = resp
        .headers()
        .get("x-mock-app")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    who.unwrap()
}

#[tokio::test]
async fn round_robin_over_instances_and_dead_ones_drop_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let app_b1 = MockApp::start("b1").await;
    let app_b2 = MockApp::start("b2").await;
    let b1 = start(with_app("b", &app_b1, &db)).await;
    let mut b2 = start(with_app("b", &app_b2, &db)).await;
    let a = start(tandem().app_id("a").name_resolution_db(&db)).await;
    let c = client();

    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(call_b(&c, &a).await);
    }
    let n1 = seen.iter().filter(|s| *s == "b1").count();
    let n2 = seen.iter().filter(|s| *s == "b2").count();
    assert!(n1 >= 4 && n2 >= 4, "round-robin: {seen:?}");

    // kill -9 one instance: its registration stays in the database for a while, but calls
    // keep succeeding on the other one at once.
    b2.kill9().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = app_b1.invocations().len();
    for _ in 0..10 {
        assert_eq!(call_b(&c, &a).await, "b1");
    }
    assert_eq!(app_b1.invocations().len() - before, 10);

    // A graceful shutdown deregisters at once: once the cache expires, only the killed
    // instance is left in the database, and calls fail trying it.
    let (b1_port, b2_port) = (b1.internal_port, b2.internal_port);
    let mut b1 = b1;
    b1.terminate().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let resp = c
            .get(a.url("/v1.0/invoke/b/method/who"))
            .send()
            .await
            .unwrap();
        let body = assert_error(
            resp,
            500,
            "ERR_DIRECT_INVOKE",
            "failed to invoke, id: b, err: calling the sidecar at",
        )
        .await;
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&format!(":{b2_port}")), "{message}");
        assert!(!message.contains(&format!(":{b1_port}")), "{message}");
    }
}

#[tokio::test]
async fn a_sidecar_gone_silent_fails_the_call_instead_of_hanging_it() {
    // SIGSTOP leaves b's sockets open: to a, b is a machine that vanished without closing
    // anything. a's connection to b notices that b no longer answers its PINGs, fails the
    // call in flight, and the next call, once b runs again, goes over a new connection.
    let (_dir, _app_b, b, a) = a_and_b().await;
    let c = client();
    assert_eq!(call_b(&c, &a).await, "b");

    assert_silent_callee_fails_the_call(&a, &b, "/v1.0/invoke/b/method/who").await;
    // b's registration lapsed while it was frozen; once it has renewed it, calls reach it again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = c
            .get(a.url("/v1.0/invoke/b/method/who"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.headers()["x-mock-app"], "b");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b is not reached again after it runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn http_endpoint_and_url_targets() {
    let ext = MockApp::start("ext").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"token": "s3cret"}"#).unwrap();
    let resources = format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: localsecrets
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: {secrets}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata:
  name: external
spec:
  baseUrl: http://127.0.0.1:{port}/base/
  headers:
  - name: x-api-key
    value: k-1
  - name: authorization
    secretKeyRef:
      name: token
      key: token
auth:
  secretStore: localsecrets
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata:
  name: broken
spec:
  baseUrl: http://127.0.0.1:{port}
  headers:
  - name: authorization
    secretKeyRef:
      name: missing
      key: missing
auth:
  secretStore: localsecrets
"#,
        secrets = secrets.display(),
        port = ext.port()
    );
    let sc = start(
        tandem()
            .app_id("caller")
            .name_resolution_db(dir.path().join("nr.db"))
            .resource("resources.yaml", &resources),
    )
    .await;
    let c = client();

    let resp = c
        .post(sc.url("/v1.0/invoke/external/method/items/7?full=1"))
        .header("x-api-key", "overridden")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-mock-app"], "ext");
    let v = echo(resp).await;
    assert_eq!(v["path"], "/base/items/7");
    assert_eq!(v["query"], "full=1");
    assert_eq!(v["body"], "payload");
    assert_eq!(v["headers"]["x-api-key"], "k-1");
    assert_eq!(v["headers"]["authorization"], "s3cret");
    assert!(v["headers"].get("dapr-caller-app-id").is_none());

    // A full URL as the target, escaped or not.
    let target = format!("http%3A%2F%2F127.0.0.1%3A{}", ext.port());
    let v = echo(
        c.get(sc.url(&format!("/v1.0/invoke/{target}/method/direct?q=2")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["path"], "/direct");
    assert_eq!(v["query"], "q=2");
    let v = echo(c.get(ext.url("/x")).send().await.unwrap()).await;
    assert_eq!(v["path"], "/x");
    let v = echo(
        c.get(sc.url("/plain"))
            .header("dapr-app-id", format!("http://127.0.0.1:{}", ext.port()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["path"], "/plain");

    // An endpoint whose secret is missing answers with the reason; the sidecar runs on.
    let resp = c
        .get(sc.url("/v1.0/invoke/broken/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "HTTPEndpoint broken is not usable",
    )
    .await;
    assert!(sc.log().contains("HTTPEndpoint is not usable"));
}

#[tokio::test]
async fn access_control_on_the_callee_side() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        r#"apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: acl
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: a
      defaultAction: deny
      trustDomain: public
      namespace: default
      operations:
      - name: /allowed/**
        httpVerb: ["GET", "PUT"]
        action: allow
      - name: /open
        httpVerb: ["*"]
        action: allow
"#,
    )
    .unwrap();
    let app_b = MockApp::start("b").await;
    let (b, metrics_port) = configured_b(&app_b, &db, &config).await;
    let a = start(tandem().app_id("a").name_resolution_db(&db)).await;
    let other = start(tandem().app_id("other").name_resolution_db(&db)).await;
    let c = client();

    let ok = |resp: reqwest::Response| async move {
        let status = resp.status();
        assert_eq!(status, 200, "{}", resp.text().await.unwrap());
    };
    ok(c.get(a.url("/v1.0/invoke/b/method/allowed/x/y"))
        .send()
        .await
        .unwrap())
    .await;
    ok(c.put(a.url("/v1.0/invoke/b/method/ALLOWED/x"))
        .send()
        .await
        .unwrap())
    .await;
    ok(c.delete(a.url("/v1.0/invoke/b/method/open"))
        .send()
        .await
        .unwrap())
    .await;

    let resp = c
        .post(a.url("/v1.0/invoke/b/method/allowed/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        403,
        "ERR_DIRECT_INVOKE",
        "access control policy has denied access to id: spiffe://public/ns/default/a operation: allowed/x verb: POST",
    )
    .await;
    let resp = c
        .get(a.url("/v1.0/invoke/b/method/secret"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        403,
        "ERR_DIRECT_INVOKE",
        "operation: secret verb: GET",
    )
    .await;
    // Another caller has no policy: the global default (deny) applies.
    let resp = c
        .get(other.url("/v1.0/invoke/b/method/allowed/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        403,
        "ERR_DIRECT_INVOKE",
        "spiffe://public/ns/default/other",
    )
    .await;
    // Access control guards calls from other sidecars, not the app's calls to itself.
    ok(c.get(b.url("/v1.0/invoke/b/method/secret"))
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        app_b.invocations(),
        [
            "GET /allowed/x/y",
            "PUT /ALLOWED/x",
            "DELETE /open",
            "GET /secret"
        ]
    );

    // Each decision is counted by the caller's identity and by what decided it: a's policy
    // (it sets its own default) or the global action (no policy for `other`). The app's call
    // to itself is not checked, so not counted.
    let text = common::scrape_metrics(metrics_port).await;
    let count = |family: &str, app: &str| {
        common::counter_value(
            &text,
            &format!(
                "dapr_runtime_acl_{family}_total{{app_id=\"{app}\",trustDomain=\"public\",namespace=\"default\"}}"
            ),
        )
    };
    assert_eq!(count("app_policy_action_allowed", "a"), Some(3), "{text}");
    assert_eq!(count("app_policy_action_blocked", "a"), Some(2), "{text}");
    assert_eq!(
        count("global_policy_action_blocked", "other"),
        Some(1),
        "{text}"
    );
    assert_eq!(count("global_policy_action_allowed", "a"), None, "{text}");
    assert_eq!(count("global_policy_action_blocked", "b"), None, "{text}");
    assert!(text.contains("# TYPE dapr_runtime_acl_global_policy_action_allowed_total counter"));
}

#[tokio::test]
async fn an_access_control_section_that_only_allows_counts_every_call() {
    // `defaultAction: allow` and no policy: every call goes through, and, as in daprd, the
    // list is consulted, so each call counts as allowed by the global action.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: acl\nspec:\n  accessControl:\n    defaultAction: allow\n",
    )
    .unwrap();
    let app_b = MockApp::start("b").await;
    let (_b, metrics_port) = configured_b(&app_b, &db, &config).await;
    let a = start(tandem().app_id("a").name_resolution_db(&db)).await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(call_b(&c, &a).await, "b");
    }
    let text = common::scrape_metrics(metrics_port).await;
    assert_eq!(
        common::counter_value(
            &text,
            "dapr_runtime_acl_global_policy_action_allowed_total{app_id=\"a\",trustDomain=\"public\",namespace=\"default\"}"
        ),
        Some(2),
        "{text}"
    );
}

/// Reads a streaming response and returns when each chunk arrived, from the request's start.
async fn chunk_times(resp: reqwest::Response, start: Instant) -> Vec<(Duration, String)> {
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        out.push((
            start.elapsed(),
            String::from_utf8_lossy(&chunk).into_owned(),
        ));
    }
    out
}

#[tokio::test]
async fn streaming_responses_arrive_incrementally() {
    let (_dir, _app_b, b, a) = a_and_b().await;
    let c = client();

    for sidecar in [&b, &a] {
        let start = Instant::now();
        let resp = c
            .get(sidecar.url("/v1.0/invoke/b/method/events"))
            .header("accept", "text/event-stream")
            .header("mock-mode", "stream")
            .header("mock-chunks", "4")
            .header("mock-delay-ms", "400")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let chunks = chunk_times(resp, start).await;
        let text: String = chunks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
        // The first event arrives long before the last one was produced (1.2 s later).
        let (first, _) = chunks[0];
        let (last, _) = chunks[chunks.len() - 1];
        assert!(first < Duration::from_millis(700), "first after {first:?}");
        assert!(last >= Duration::from_millis(1100), "last after {last:?}");
        assert!(last - first >= Duration::from_millis(800), "{chunks:?}");
    }
}
