//! End-to-end: flags, resource loading errors, metadata, health, API token and shutdown.

mod common;

use std::time::Duration;

use common::{IN_MEMORY, assert_error, client, start, tandem};
use serde_json::{Value, json};

#[tokio::test]
async fn metadata_lists_components_and_extended_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("s.json");
    std::fs::write(&secrets, "{}").unwrap();
    let subscription = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n    - match: event.type == \"x\"\n      path: /x\n    default: /orders\n  deadLetterTopic: dlq\n";
    let sc = start(
        tandem()
            .app_id("meta-app")
            .resource("state.yaml", IN_MEMORY)
            .resource(
                "secrets.yaml",
                &format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n---\n{subscription}", secrets.display()),
            )
            .arg("--app-port")
            .arg("6001"),
    )
    .await;
    let c = client();
    let resp = c
        .put(sc.url("/v1.0/metadata/owner"))
        .body("team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let m: Value = c
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["id"], "meta-app");
    assert_eq!(m["extended"]["owner"], "team-a");
    let comps = m["components"].as_array().unwrap();
    let state = comps.iter().find(|c| c["name"] == "statestore").unwrap();
    assert_eq!(state["type"], "state.in-memory");
    assert_eq!(state["version"], "v1");
    let caps: Vec<&str> = state["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in ["ETAG", "TTL", "TRANSACTIONAL", "ACTOR"] {
        assert!(caps.contains(&cap), "{cap} missing from {caps:?}");
    }
    assert!(
        comps
            .iter()
            .any(|c| c["name"] == "files" && c["type"] == "secretstores.local.file")
    );
    let sub = &m["subscriptions"][0];
    assert_eq!(sub["topic"], "orders");
    assert_eq!(sub["type"], "DECLARATIVE");
    assert_eq!(sub["deadLetterTopic"], "dlq");
    assert_eq!(
        sub["rules"],
        json!([{"match": "event.type == \"x\"", "path": "/x"}, {"match": "", "path": "/orders"}])
    );
    assert_eq!(m["appConnectionProperties"]["port"], 6001);
    assert_eq!(m["appConnectionProperties"]["protocol"], "http");
}

#[tokio::test]
async fn health_endpoints() {
    let sc = start(tandem().app_id("healthy")).await;
    let c = client();
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(sc.url("/v1.0/healthz/outbound"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(sc.url("/v1.0/healthz?appid=healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let resp = c
        .get(sc.url("/v1.0/healthz?appid=other"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_HEALTH_APPID_NOT_MATCH",
        "dapr app-id does not match",
    )
    .await;
}

/// A client that opens a connection to the HTTP API and sends no request, or only part of
/// one, is let go after daprd's `ReadHeaderTimeout` (10 s); others are served meanwhile.
#[tokio::test]
async fn clients_that_send_no_whole_request_head_are_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sc = start(tandem().app_id("heads")).await;
    let started = std::time::Instant::now();
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", sc.http_port))
        .await
        .unwrap();
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", sc.http_port))
        .await
        .unwrap();
    partial
        .write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let resp = client().get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    for (what, mut tcp) in [("silent", silent), ("partial", partial)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection was kept open"));
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "the {what} connection got an answer: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "the {what} connection was let go after {:?}, before the 10 s allowed",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn api_token_is_enforced() {
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .env("DAPR_API_TOKEN", "tok"),
    )
    .await;
    let c = client();
    let resp = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), "invalid api token\n");
    let resp = c
        .get(sc.url("/v1.0/metadata"))
        .header("dapr-api-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(sc.url("/v1.0/metadata"))
        .header("dapr-api-token", "tok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Exempt: the two health GETs.
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(sc.url("/v1.0/healthz/outbound"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // Not exempt: shutdown.
    assert_eq!(
        c.post(sc.url("/v1.0/shutdown"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn shutdown_api_exits_zero() {
    let mut sc = start(tandem()).await;
    let resp = client()
        .post(sc.url("/v1.0/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let status = sc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn forced_shutdown_exits_one() {
    let mut sc = start(tandem()).await;
    let resp = client()
        .post(sc.url("/v1.0/shutdown"))
        .header("dapr-force-shutdown", "TRUE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let status = sc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let status = sc.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn bad_yaml_names_the_file_and_exits_non_zero() {
    let out = tandem()
        .resource(
            "broken.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [unclosed\n",
        )
        .run_to_exit()
        .await;
    assert!(!out.status.success());
    assert!(out.log.contains("broken.yaml"), "{}", out.log);

    let out = tandem()
        .resource("missing-type.yaml", "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  version: v1\n")
        .run_to_exit()
        .await;
    assert!(!out.status.success());
    assert!(
        out.log.contains("missing-type.yaml") && out.log.contains("type"),
        "{}",
        out.log
    );
}

#[tokio::test]
async fn unknown_component_type_fails_unless_ignored() {
    let unknown = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: mystery\nspec:\n  type: state.nosuchthing\n  version: v1\n";
    let out = tandem().resource("c.yaml", unknown).run_to_exit().await;
    assert!(!out.status.success());
    assert!(
        out.log.contains("mystery") && out.log.contains("state.nosuchthing"),
        "{}",
        out.log
    );

    let ignored = format!("{unknown}  ignoreErrors: true\n");
    let sc = start(
        tandem()
            .resource("c.yaml", &ignored)
            .resource("s.yaml", IN_MEMORY),
    )
    .await;
    let m: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["statestore"]);
}

#[tokio::test]
async fn bad_component_metadata_fails_with_the_field_name() {
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: tableName\n    value: \"x; drop table\"\n  - name: connectionString\n    value: \":memory:\"\n";
    let out = tandem().resource("c.yaml", yaml).run_to_exit().await;
    assert!(!out.status.success());
    assert!(out.log.contains("tableName"), "{}", out.log);
}

#[tokio::test]
async fn scoped_components_load_only_for_their_apps() {
    let scoped = format!("{IN_MEMORY}scopes:\n- other-app\n");
    let sc = start(tandem().app_id("this-app").resource("s.yaml", &scoped)).await;
    let resp = client()
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_STATE_STORE_NOT_CONFIGURED", "").await;
}

#[tokio::test]
async fn daprd_flags_single_dash_and_unknown_valid_flags() {
    let sc = start(
        tandem()
            .resource("s.yaml", IN_MEMORY)
            .arg("-log-level")
            .arg("debug")
            .arg("--enable-profiling")
            .arg("--placement-host-address=localhost:50005")
            .arg("-app-max-concurrency")
            .arg("-1"),
    )
    .await;
    assert_eq!(
        client()
            .get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let log = sc.log();
    assert!(
        log.contains("--enable-profiling") && log.contains("--placement-host-address"),
        "{log}"
    );

    let out = tandem().arg("--no-such-flag").run_to_exit().await;
    assert!(!out.status.success());
    assert!(out.log.contains("--no-such-flag"), "{}", out.log);
}

#[tokio::test]
async fn invoked_as_daprd() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("daprd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tandem"), &link).unwrap();
    let out = std::process::Command::new(&link)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );

    let ports = dir.path().join("ports.json");
    let mut child = tokio::process::Command::new(&link)
        .args([
            "--app-id",
            "via-daprd",
            "--dapr-http-port",
            "0",
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--ports-file",
        ])
        .arg(&ports)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut port = None;
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            let v: Value = serde_json::from_str(&text).unwrap();
            port = v["http"].as_u64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let port = port.expect("daprd wrote its ports");
    let m: Value = client()
        .get(format!("http://127.0.0.1:{port}/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["id"], "via-daprd");
    child.kill().await.unwrap();
}

/// A moment after readiness the sidecar gives back the pages of code only start-up ran: its
/// file-backed resident memory falls, and it keeps answering (the code it runs is mapped back).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn start_up_pages_are_given_back_and_the_sidecar_keeps_serving() {
    let rss_file_kib = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let sc = start(
        tandem()
            .app_id("resident")
            .resource("state.yaml", IN_MEMORY),
    )
    .await;
    let at_ready = rss_file_kib(sc.pid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut now = at_ready;
    while now > at_ready * 2 / 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = rss_file_kib(sc.pid);
    }
    assert!(
        now <= at_ready * 2 / 3,
        "RssFile {at_ready} kB at ready, still {now} kB 15 s later"
    );
    let c = client();
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": "still here"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        common::get_state(&sc, "statestore", "k").await,
        (200, "\"still here\"".to_owned())
    );
}

/// Every thread of the sidecar runs under `SCHED_BATCH`; `TANDEM_SCHED_BATCH=0` keeps the
/// default policy.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_sidecar_runs_under_sched_batch_unless_turned_off() {
    // The policy of each thread: field 41 of its `stat`, counted from the first field after
    // the command name's closing parenthesis (field 3).
    let policies = |pid: u32| -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|task| {
                let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
                let after_name = &stat[stat.rfind(')').unwrap() + 1..];
                after_name
                    .split_whitespace()
                    .nth(38)
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let batch = start(tandem().app_id("batch").resource("state.yaml", IN_MEMORY)).await;
    let default = start(
        tandem()
            .app_id("default")
            .resource("state.yaml", IN_MEMORY)
            .env("TANDEM_SCHED_BATCH", "0"),
    )
    .await;
    // Served a request: whatever threads serving starts are there too.
    for sc in [&batch, &default] {
        assert_eq!(common::get_state(sc, "statestore", "k").await.0, 204);
    }
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let (on, off) = (policies(batch.pid), policies(default.pid));
    assert!(on.iter().all(|p| *p == SCHED_BATCH), "policies {on:?}");
    assert!(off.iter().all(|p| *p == SCHED_OTHER), "policies {off:?}");
}
