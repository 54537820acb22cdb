//! Loading tests: whole files and folders through the public API.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn ctx() -> LoadContext {
    LoadContext::new("app1")
}

fn parse(text: &str) -> Result<Resources, ConfigError> {
    parse_resources(text, Path::new("/tmp/res/test.yaml"), &ctx())
}

fn parse_err(text: &str) -> String {
    parse(text)
        .expect_err("the text should not load")
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

const COMPONENT: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
  namespace: default
spec:
  type: state.redis
  version: v1
  ignoreErrors: true
  initTimeout: 1m30s
  metadata:
  - name: redisHost
    value: localhost:6379
auth:
  secretStore: localsecretstore
";

#[test]
fn several_documents_per_file() {
    let text = format!(
        "{COMPONENT}---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    default: /orders
---
# an empty document (comments only) is ignored
---
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
spec: {{}}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: res
spec:
  policies:
    timeouts:
      general: 5s
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata:
  name: github
spec:
  baseUrl: https://api.github.com
"
    );
    let r = parse(&text).unwrap();
    assert_eq!(r.components.len(), 1);
    assert_eq!(r.subscriptions.len(), 1);
    assert_eq!(r.resiliencies.len(), 1);
    assert_eq!(r.http_endpoints.len(), 1);
    assert!(
        r.skipped.is_empty(),
        "Configuration is skipped silently: {:?}",
        r.skipped
    );

    let c = &r.components[0];
    assert_eq!(c.name, "statestore");
    assert_eq!(c.namespace.as_deref(), Some("default"));
    assert_eq!(c.type_name, "state.redis");
    assert_eq!(c.building_block(), "state");
    assert_eq!(c.version, "v1");
    assert!(c.ignore_errors);
    assert_eq!(c.init_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.secret_store.as_deref(), Some("localsecretstore"));
    assert_eq!(c.source.document, 1);
    assert_eq!(r.subscriptions[0].source.document, 2);
    // Documents keep their position in the file, empty ones included.
    assert_eq!(r.resiliencies[0].source.document, 5);
    assert_eq!(r.http_endpoints[0].source.document, 6);
    assert_eq!(
        r.http_endpoints[0].source.to_string(),
        "/tmp/res/test.yaml: document 6"
    );
}

#[test]
fn component_defaults_when_fields_are_absent() {
    let r = parse(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  metadata:
",
    )
    .unwrap();
    let c = &r.components[0];
    assert_eq!(c.version, "");
    assert!(!c.ignore_errors);
    assert_eq!(c.init_timeout, None);
    assert!(c.metadata.is_empty());
    assert_eq!(c.secret_store, None);
    assert!(c.scopes.is_empty());
}

#[test]
fn metadata_value_forms() {
    let r = parse(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c}
spec:
  type: state.redis
  metadata:
  - name: host
    value: localhost:6379
  - name: password
    secretKeyRef: {name: redis-secret, key: password}
  - name: token
    secretKeyRef: {name: token-secret}
  - name: fromEnv
    envRef: MY_VAR
  - name: port
    value: 6379
  - name: ratio
    value: 0.25
  - name: whole
    value: 2.0
  - name: negative
    value: -3
  - name: enabled
    value: true
  - name: quoted
    value: \"false\"
  - name: nothing
    value:
  - name: absent
  - name: object
    value: {a: 1, b: [x, true]}
  - name: list
    value: [1, 2]
",
    )
    .unwrap();
    let values: BTreeMap<_, _> = r.components[0]
        .metadata
        .iter()
        .map(|m| (m.name.as_str(), m.value.clone()))
        .collect();
    let lit = |s: &str| MetadataValue::Value(s.to_owned());
    assert_eq!(values["host"], lit("localhost:6379"));
    assert_eq!(
        values["password"],
        MetadataValue::SecretKeyRef {
            name: "redis-secret".into(),
            key: "password".into()
        }
    );
    assert_eq!(
        values["token"],
        MetadataValue::SecretKeyRef {
            name: "token-secret".into(),
            key: "token-secret".into()
        },
        "an omitted key defaults to the secret name"
    );
    assert_eq!(values["fromEnv"], MetadataValue::EnvRef("MY_VAR".into()));
    assert_eq!(values["port"], lit("6379"));
    assert_eq!(values["ratio"], lit("0.25"));
    assert_eq!(values["whole"], lit("2"));
    assert_eq!(values["negative"], lit("-3"));
    assert_eq!(values["enabled"], lit("true"));
    assert_eq!(values["quoted"], lit("false"));
    assert_eq!(values["nothing"], lit(""));
    assert_eq!(values["absent"], lit(""));
    assert_eq!(values["object"], lit(r#"{"a":1,"b":["x",true]}"#));
    assert_eq!(values["list"], lit("[1,2]"));
    assert_eq!(
        r.components[0]
            .metadata_item("HOST")
            .unwrap()
            .value
            .as_literal(),
        Some("localhost:6379")
    );
}

#[test]
fn field_names_match_case_insensitively_like_daprd() {
    let r = parse(
        "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: s}
spec:
  pubsubName: pubsub
  Topic: orders
  routes: {default: /orders}
",
    )
    .unwrap();
    assert_eq!(r.subscriptions[0].pubsub_name, "pubsub");
    assert_eq!(r.subscriptions[0].topic, "orders");
}

#[test]
fn subscriptions_v1_and_v2_are_normalised() {
    let r = parse(
        "apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: legacy}
spec:
  topic: orders
  pubsubname: pubsub
  route: /orders
  deadLetterTopic: orders-dlq
  metadata:
    rawPayload: true
    maxCount: 5
scopes: [app1]
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: current}
spec:
  pubsubname: pubsub
  topic: payments
  routes:
    rules:
    - match: event.type == \"order.created\"
      path: /orders/created
    - match: event.type == \"order.paid\"
      path: /orders/paid
    default: /orders
  bulkSubscribe:
    enabled: true
    maxMessagesCount: 100
    maxAwaitDurationMs: 1000
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: bare}
spec:
  pubsubname: pubsub
  topic: t
",
    )
    .unwrap();
    let [v1, v2, bare] = r.subscriptions.as_slice() else {
        panic!("expected three subscriptions, got {:?}", r.subscriptions);
    };
    assert_eq!(v1.pubsub_name, "pubsub");
    assert_eq!(v1.topic, "orders");
    assert!(v1.rules.is_empty());
    assert_eq!(v1.default_route.as_deref(), Some("/orders"));
    assert_eq!(v1.dead_letter_topic.as_deref(), Some("orders-dlq"));
    assert_eq!(v1.metadata["rawPayload"], "true");
    assert_eq!(v1.metadata["maxCount"], "5");
    assert_eq!(v1.scopes, vec!["app1".to_owned()]);
    assert_eq!(v1.bulk_subscribe, None);

    assert_eq!(v2.topic, "payments");
    assert_eq!(
        v2.rules,
        vec![
            RouteRule {
                match_expr: "event.type == \"order.created\"".into(),
                path: "/orders/created".into()
            },
            RouteRule {
                match_expr: "event.type == \"order.paid\"".into(),
                path: "/orders/paid".into()
            },
        ]
    );
    assert_eq!(v2.default_route.as_deref(), Some("/orders"));
    assert_eq!(v2.dead_letter_topic, None);
    assert_eq!(
        v2.bulk_subscribe,
        Some(BulkSubscribe {
            enabled: true,
            max_messages_count: Some(100),
            max_await_duration_ms: Some(1000)
        })
    );
    assert_eq!(bare.default_route, None);
    assert!(bare.rules.is_empty());
}

#[test]
fn subscription_requires_pubsub_and_topic() {
    let err = parse_err(
        "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: s}
spec:
  pubsubname: pubsub
",
    );
    assert_eq!(
        err,
        "/tmp/res/test.yaml: document 1 (Subscription \"s\"): spec.topic: required field is missing or empty"
    );
    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: s}
spec:
  topic: t
",
    );
    assert!(err.contains("spec.pubsubname: required"), "{err}");
}

#[test]
fn templates_are_substituted_in_values_only() {
    let text = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.redis
  metadata:
  - name: consumerID
    value: \"{namespace}-{appID}\"
  - name: ids
    value: \"{uuid} {uuid}\"
  - name: \"{appID}\"
    value: plain
  - name: pod
    value: \"{podName}\"
  - name: secret
    secretKeyRef: {name: \"{appID}\"}
";
    let ctx = LoadContext {
        app_id: "app1".into(),
        namespace: Some("prod".into()),
        pod_name: Some("pod-7".into()),
    };
    let r = parse_resources(text, Path::new("/tmp/p.yaml"), &ctx).unwrap();
    let m = &r.components[0].metadata;
    assert_eq!(m[0].value.as_literal(), Some("prod.app1-app1"));
    let ids: Vec<&str> = m[1].value.as_literal().unwrap().split(' ').collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "each {{uuid}} is a fresh UUID");
    for id in ids {
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    }
    assert_eq!(m[2].name, "{appID}", "names are not templated");
    assert_eq!(m[3].value.as_literal(), Some("pod-7"));
    assert_eq!(
        m[4].value,
        MetadataValue::SecretKeyRef {
            name: "{appID}".into(),
            key: "{appID}".into()
        }
    );

    // Without a namespace, {namespace} is just the app-id.
    let no_pod = text.replace("\"{podName}\"", "x");
    let r = parse_resources(&no_pod, Path::new("/tmp/p.yaml"), &LoadContext::new("app1")).unwrap();
    assert_eq!(
        r.components[0].metadata[0].value.as_literal(),
        Some("app1-app1")
    );

    // {podName} without a pod name names the file, component, field and item.
    let err = parse_resources(text, Path::new("/tmp/p.yaml"), &LoadContext::new("app1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/tmp/p.yaml: document 1 (Component \"pubsub\"): spec.metadata[3].value: "),
        "{err}"
    );
    assert!(
        err.contains("\"pod\"") && err.contains("{podName}"),
        "{err}"
    );
}

#[test]
fn scopes_filter_resources() {
    let text = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: mine}
spec: {type: state.in-memory}
scopes: [app1, app2]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: theirs}
spec: {type: state.in-memory}
scopes: [app2]
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: res}
scopes: [app3]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: everyone}
spec: {type: state.in-memory}
scopes: []
";
    let r = parse(text).unwrap();
    let names: Vec<_> = r.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["mine", "everyone"]);
    assert!(r.resiliencies.is_empty());
    assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
    assert!(
        r.skipped[0].contains("(Component \"theirs\")"),
        "{:?}",
        r.skipped
    );
    assert!(
        r.skipped[0].contains("scoped to other apps (app2)"),
        "{:?}",
        r.skipped
    );
    assert!(
        r.skipped[1].contains("(Resiliency \"res\")"),
        "{:?}",
        r.skipped
    );
}

#[test]
fn namespace_filter_applies_only_when_both_are_set() {
    let text = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: dev, namespace: dev}
spec: {type: state.in-memory}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: prod, namespace: prod}
spec: {type: state.in-memory}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: any}
spec: {type: state.in-memory}
";
    let in_prod = LoadContext {
        namespace: Some("prod".into()),
        ..LoadContext::new("app1")
    };
    let r = parse_resources(text, Path::new("/r.yaml"), &in_prod).unwrap();
    let names: Vec<_> = r.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prod", "any"]);
    assert_eq!(r.skipped.len(), 1);
    assert!(
        r.skipped[0].contains("namespace \"dev\""),
        "{:?}",
        r.skipped
    );

    // No namespace for the sidecar: the manifests' namespaces are ignored.
    let r = parse_resources(text, Path::new("/r.yaml"), &LoadContext::new("app1")).unwrap();
    assert_eq!(r.components.len(), 3);
}

#[test]
fn unknown_kinds_are_skipped_with_a_reason() {
    let r = parse(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: dapr.io/v1alpha1
kind: Widget
metadata: {name: w}
---
apiVersion: dapr.io/v3
kind: Component
metadata: {name: c}
---
- just
- a list
---
apiVersion: dapr.io/v1alpha1
kind: MCPServer
metadata: {name: m}
",
    )
    .unwrap();
    assert!(r.components.is_empty());
    assert_eq!(r.skipped.len(), 5, "{:?}", r.skipped);
    assert_eq!(
        r.skipped[0],
        "/tmp/res/test.yaml: document 1 (ConfigMap \"cm\"): skipped: unknown apiVersion/kind \"v1\"/\"ConfigMap\""
    );
    assert!(
        r.skipped[2].contains("\"dapr.io/v3\"/\"Component\""),
        "{:?}",
        r.skipped
    );
    assert!(
        r.skipped[3].contains("document 4: skipped: not a mapping"),
        "{:?}",
        r.skipped
    );
    assert!(r.skipped[4].contains("not supported"), "{:?}", r.skipped);
}

#[test]
fn errors_name_file_document_and_field() {
    let text = format!(
        "{COMPONENT}---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore2
spec:
  type: state.redis
  initTimeout: soon
"
    );
    let err = parse_resources(&text, Path::new("/tmp/res/state.yaml"), &ctx()).unwrap_err();
    assert_eq!(err.path(), Path::new("/tmp/res/state.yaml"));
    assert_eq!(err.document_index(), Some(2));
    assert_eq!(err.field(), Some("spec.initTimeout"));
    assert!(
        err.to_string().starts_with(
            "/tmp/res/state.yaml: document 2 (Component \"statestore2\"): spec.initTimeout: invalid duration 'soon': "
        ),
        "{err}"
    );

    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c}
spec:
  version: v1
",
    );
    assert_eq!(
        err,
        "/tmp/res/test.yaml: document 1 (Component \"c\"): spec.type: required field is missing or empty"
    );

    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c}
spec:
  type: state.redis
  ignoreErrors: maybe
",
    );
    assert!(
        err.contains("spec.ignoreErrors: expected a boolean"),
        "{err}"
    );
}

#[test]
fn errors_never_show_metadata_values() {
    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c}
spec:
  type: state.redis
  metadata:
  - name: password
    secretKeyRef: hunter2-secret-value
",
    );
    assert!(
        err.contains("spec.metadata[0].secretKeyRef: invalid type: string, expected"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn names_are_required_and_must_be_path_segments() {
    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
spec: {type: state.redis}
",
    );
    assert_eq!(
        err,
        "/tmp/res/test.yaml: document 1 (Component): metadata.name: required field is missing or empty"
    );
    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: a/b}
spec: {type: state.redis}
",
    );
    assert!(
        err.contains("metadata.name: name \"a/b\" is not a valid path segment"),
        "{err}"
    );
    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ..}
spec: {type: state.redis}
",
    );
    assert!(err.contains("metadata.name"), "{err}");
}

#[test]
fn yaml_syntax_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\n   bad: [\n",
    );
    let err = load_resources(&[dir.path().to_path_buf()], &ctx()).unwrap_err();
    let file = dir.path().join("broken.yaml");
    assert_eq!(err.path(), file);
    let line = err.line().expect("a syntax error has a line");
    assert!((4..=6).contains(&line), "line {line}: {err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: line {line} column ", file.display())),
        "{text}"
    );
    assert!(text.contains("invalid YAML"), "{text}");

    // A syntax error in a later document still names the file and its line.
    let err = parse_err(&format!("{COMPONENT}---\nkey: [unclosed\n"));
    assert!(err.starts_with("/tmp/res/test.yaml: line "), "{err}");
}

#[test]
fn duplicate_names_across_files_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", COMPONENT);
    let b = write(
        dir.path(),
        "b.yml",
        &format!(
            "apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {{name: statestore}}
spec: {{pubsubname: p, topic: t}}
---
{COMPONENT}"
        ),
    );
    let err = load_resources(&[dir.path().to_path_buf()], &ctx())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: document 2 (Component \"statestore\"): metadata.name: duplicate Component name \"statestore\": already defined in {} document 1",
            b.display(),
            a.display()
        )
    );

    // The same name for two apps, each scoped, is not a duplicate for either.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!("{COMPONENT}scopes: [app1]\n"),
    );
    write(
        dir.path(),
        "b.yaml",
        &format!("{COMPONENT}scopes: [app2]\n"),
    );
    let r = load_resources(&[dir.path().to_path_buf()], &ctx()).unwrap();
    assert_eq!(r.components.len(), 1);
    assert_eq!(r.skipped.len(), 1);
}

#[test]
fn folders_are_read_flat_sorted_and_yaml_only() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let component = |name: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\nspec: {{type: state.in-memory}}\n"
        )
    };
    write(one.path(), "b.yaml", &component("b"));
    write(one.path(), "a.YML", &component("a"));
    write(one.path(), "c.txt", &component("txt"));
    write(one.path(), "d.yaml.bak", &component("bak"));
    fs::create_dir(one.path().join("nested.yaml")).unwrap();
    fs::create_dir(one.path().join("sub")).unwrap();
    write(&one.path().join("sub"), "e.yaml", &component("nested"));
    write(two.path(), "0.yaml", &component("z"));
    let r = load_resources(
        &[one.path().to_path_buf(), two.path().to_path_buf()],
        &ctx(),
    )
    .unwrap();
    let names: Vec<_> = r.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "z"]);
    assert_eq!(
        r.component("b").unwrap().source.file,
        one.path().join("b.yaml")
    );

    let missing = one.path().join("missing");
    let err = load_resources(std::slice::from_ref(&missing), &ctx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: resources path does not exist", missing.display())
    );
    let file = one.path().join("b.yaml");
    let err = load_resources(std::slice::from_ref(&file), &ctx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: resources path is not a directory", file.display())
    );

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        load_resources(&[empty.path().to_path_buf()], &ctx()).unwrap(),
        Resources::default()
    );
}

const RESILIENCY: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
scopes: [app1]
spec:
  policies:
    timeouts:
      general: 5s
      quick: 250
    retries:
      retryForever:
        policy: constant
        duration: 5s
        maxRetries: -1
      important:
        policy: Exponential
        maxInterval: 15s
        maxRetries: 10
        matching:
          httpStatusCodes: \"429,500-599\"
          gRPCStatusCodes: \"1-4,8-11,13,14\"
      plain: {}
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        interval: 8s
        timeout: 45s
        trip: consecutiveFailures >= 5
      defaultCB: {}
  targets:
    apps:
      appB:
        timeout: general
        retry: important
        circuitBreaker: simpleCB
        circuitBreakerCacheSize: 1000
      appC:
        retry: DaprBuiltInServiceRetries
    actors:
      myActorType:
        timeout: general
        retry: important
        circuitBreaker: simpleCB
        circuitBreakerScope: both
    components:
      statestore:
        outbound:
          timeout: general
          retry: retryForever
          circuitBreaker: simpleCB
      pubsub:
        inbound:
          retry: important
";

#[test]
fn resiliency_is_fully_typed() {
    let r = parse(RESILIENCY).unwrap();
    let res = &r.resiliencies[0];
    assert_eq!(res.name, "myresiliency");
    assert_eq!(res.scopes, vec!["app1".to_owned()]);
    let p = &res.policies;
    assert_eq!(p.timeouts["general"], Duration::from_secs(5));
    assert_eq!(
        p.timeouts["quick"],
        Duration::from_millis(250),
        "a bare integer is milliseconds"
    );

    let forever = &p.retries["retryForever"];
    assert_eq!(forever.policy, BackoffPolicy::Constant);
    assert_eq!(forever.duration, Duration::from_secs(5));
    assert_eq!(forever.retry_limit(), None);
    let important = &p.retries["important"];
    assert_eq!(important.policy, BackoffPolicy::Exponential);
    assert_eq!(important.max_interval, Duration::from_secs(15));
    assert_eq!(important.max_retries, 10);
    assert_eq!(important.retry_limit(), Some(10));
    assert!(important.matching.retries_http(429));
    assert!(important.matching.retries_http(503));
    assert!(!important.matching.retries_http(404));
    assert!(important.matching.retries_grpc(14));
    assert!(!important.matching.retries_grpc(5));
    assert_eq!(p.retries["plain"], RetryPolicy::default());
    assert_eq!(RetryPolicy::default().duration, Duration::from_secs(5));
    assert_eq!(RetryPolicy::default().max_interval, Duration::from_secs(60));
    assert_eq!(RetryPolicy::default().max_retries, -1);

    let cb = &p.circuit_breakers["simpleCB"];
    assert_eq!(cb.max_requests, 1);
    assert_eq!(cb.interval, Duration::from_secs(8));
    assert_eq!(cb.timeout, Duration::from_secs(45));
    assert_eq!(cb.trip, "consecutiveFailures >= 5");
    let default_cb = &p.circuit_breakers["defaultCB"];
    assert_eq!(default_cb.timeout, Duration::from_secs(60));
    assert_eq!(default_cb.interval, Duration::ZERO);
    assert_eq!(default_cb.trip, "consecutiveFailures > 5");

    let t = &res.targets;
    assert_eq!(t.apps["appB"].circuit_breaker.as_deref(), Some("simpleCB"));
    assert_eq!(t.apps["appB"].circuit_breaker_cache_size, 1000);
    assert_eq!(t.apps["appC"].circuit_breaker_cache_size, 100);
    let actor = &t.actors["myActorType"];
    assert_eq!(
        actor.circuit_breaker_scope,
        Some(ActorCircuitBreakerScope::Both)
    );
    assert_eq!(actor.circuit_breaker_cache_size, 5000);
    assert_eq!(
        t.components["statestore"].outbound.retry.as_deref(),
        Some("retryForever")
    );
    assert_eq!(t.components["statestore"].inbound, PolicyNames::default());
    assert_eq!(
        t.components["pubsub"].inbound.retry.as_deref(),
        Some("important")
    );
}

#[test]
fn resiliency_references_must_exist() {
    let bad = RESILIENCY.replace("retry: retryForever", "retry: retryNever");
    let err = parse_err(&bad);
    assert_eq!(
        err,
        "/tmp/res/test.yaml: document 1 (Resiliency \"myresiliency\"): spec.targets.components.statestore.outbound.retry: unknown retry policy \"retryNever\": it is not defined under spec.policies"
    );
    let bad = RESILIENCY.replace(
        "      appC:\n        retry: DaprBuiltInServiceRetries",
        "      appC:\n        timeout: slow",
    );
    let err = parse_err(&bad);
    assert!(
        err.contains("spec.targets.apps.appC.timeout: unknown timeout policy \"slow\""),
        "{err}"
    );

    // daprd merges all resiliencies: a target may use a policy defined in another one.
    let split = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: policies}
spec:
  policies:
    circuitBreakers:
      shared: {}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: targets}
spec:
  targets:
    apps:
      appB: {circuitBreaker: shared}
";
    assert_eq!(parse(split).unwrap().resiliencies.len(), 2);
    let err = parse_err(&split.replace("shared: {}", "other: {}"));
    assert!(
        err.contains("(Resiliency \"targets\"): spec.targets.apps.appB.circuitBreaker: unknown circuit breaker policy \"shared\""),
        "{err}"
    );
}

#[test]
fn resiliency_values_are_validated() {
    let err = parse_err(&RESILIENCY.replace("\"429,500-599\"", "\"429,600\""));
    assert!(
        err.contains("spec.policies.retries.important.matching.httpStatusCodes: status code 600"),
        "{err}"
    );
    let err = parse_err(&RESILIENCY.replace("\"1-4,8-11,13,14\"", "\"4-1\""));
    assert!(
        err.contains("spec.policies.retries.important.matching.gRPCStatusCodes: invalid status code range '4-1'"),
        "{err}"
    );
    let err = parse_err(&RESILIENCY.replace("policy: constant", "policy: linear"));
    assert!(
        err.contains("spec.policies.retries.retryForever.policy: unknown back-off policy 'linear'"),
        "{err}"
    );
    let err = parse_err(&RESILIENCY.replace("general: 5s", "general: five"));
    assert!(
        err.contains("spec.policies.timeouts.general: invalid duration 'five'"),
        "{err}"
    );
    let err = parse_err(&RESILIENCY.replace("        circuitBreakerScope: both\n", ""));
    assert!(
        err.contains("spec.targets.actors.myActorType.circuitBreakerScope: required when circuitBreaker is set"),
        "{err}"
    );
    let err =
        parse_err(&RESILIENCY.replace("circuitBreakerScope: both", "circuitBreakerScope: all"));
    assert!(
        err.contains("spec.targets.actors.myActorType.circuitBreakerScope: unknown variant"),
        "{err}"
    );
}

#[test]
fn http_endpoints() {
    let r = parse(
        "apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: github}
spec:
  baseUrl: https://api.github.com
  headers:
  - name: Authorization
    secretKeyRef: {name: gh-token, key: token}
  - name: Accept
    value: application/json
  clientTLS:
    rootCA: {value: PEM-DATA}
    privateKey: {secretKeyRef: {name: s, key: k}}
    renegotiation: RenegotiateOnceAsClient
auth:
  secretStore: mysecrets
scopes: [app1]
",
    )
    .unwrap();
    let h = &r.http_endpoints[0];
    assert_eq!(h.base_url, "https://api.github.com");
    assert_eq!(h.headers.len(), 2);
    assert_eq!(
        h.headers[0].value,
        MetadataValue::SecretKeyRef {
            name: "gh-token".into(),
            key: "token".into()
        }
    );
    assert_eq!(h.headers[1].value.as_literal(), Some("application/json"));
    let tls = h.client_tls.as_ref().unwrap();
    assert_eq!(tls.root_ca, Some(MetadataValue::Value("PEM-DATA".into())));
    assert_eq!(tls.certificate, None);
    assert_eq!(
        tls.private_key,
        Some(MetadataValue::SecretKeyRef {
            name: "s".into(),
            key: "k".into()
        })
    );
    assert_eq!(
        tls.renegotiation,
        Some(TlsRenegotiation::RenegotiateOnceAsClient)
    );
    assert_eq!(h.secret_store.as_deref(), Some("mysecrets"));

    let err = parse_err(
        "apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: e}
spec: {headers: []}
",
    );
    assert!(
        err.ends_with("(HTTPEndpoint \"e\"): spec.baseUrl: required field is missing or empty"),
        "{err}"
    );
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn configuration_defaults_without_files() {
    let c = load_configuration(&[], &no_env).unwrap();
    assert_eq!(c, Configuration::default());
    assert!(c.metric.enabled);
    assert!(c.metric.http.increased_cardinality);
    assert!(!c.metric.record_error_codes);
    assert!(c.tracing.otel.is_secure);
    assert_eq!(c.tracing.sampling_rate, "");
    assert_eq!(c.tracing.effective_sampling_rate(), DEFAULT_SAMPLING_RATE);
    assert_eq!(c.access_control.default_action, AccessAction::Allow);
    assert_eq!(c.access_control.trust_domain, "public");
    assert!(!c.access_control.specified);
    assert!(!c.mtls.enabled);
    assert!(c.name_resolution.is_none());
    assert!(c.feature_enabled("HotReload"));
    assert!(!c.feature_enabled("ActorStateTTL"));
    assert!(c.secret_allowed("any", "secret"));
}

#[test]
fn an_access_control_section_counts_only_when_it_says_something() {
    // As daprd: no defaultAction, no trustDomain and no policy is no list at all.
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("accessControl: {}", false, AccessAction::Allow),
        (
            "accessControl: {defaultAction: '', trustDomain: ' ', policies: []}",
            false,
            AccessAction::Allow,
        ),
        (
            "accessControl: {defaultAction: allow}",
            true,
            AccessAction::Allow,
        ),
        (
            "accessControl: {trustDomain: example.org}",
            true,
            AccessAction::Allow,
        ),
        (
            "accessControl: {policies: [{appId: a}]}",
            true,
            AccessAction::Allow,
        ),
        (
            "accessControl: {defaultAction: deny}",
            true,
            AccessAction::Deny,
        ),
    ];
    for (i, (section, specified, action)) in cases.into_iter().enumerate() {
        let path = write(
            dir.path(),
            &format!("acl{i}.yaml"),
            &format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: acl\nspec:\n  {section}\n"
            ),
        );
        let c = load_configuration(&[path], &no_env).unwrap();
        assert_eq!(c.access_control.specified, specified, "{section}");
        assert_eq!(c.access_control.default_action, action, "{section}");
        let td = if section.contains("example.org") {
            "example.org"
        } else {
            "public"
        };
        assert_eq!(c.access_control.trust_domain, td, "{section}");
    }
}

#[test]
fn configuration_file_is_typed_and_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec:
  tracing:
    samplingRate: \"${RATE}\"
    stdout: true
    zipkin:
      endpointAddress: http://$ZIPKIN_HOST:9411/api/v2/spans
    otel:
      endpointAddress: localhost:4317
      protocol: grpc
      isSecure: false
      headers: \"api-key=$UNSET_VAR,x-tenant=t1\"
      timeout: 10s
  metric:
    enabled: false
    latencyDistributionBuckets: [1, 2, 5]
    http:
      increasedCardinality: false
      pathMatching: [\"/orders/{orderID}\"]
    rules:
    - name: dapr_runtime_service_invocation_req_sent_total
      labels:
      - name: method
        regex:
          \"orders/\": \"orders/.+\"
  mtls:
    enabled: true
    workloadCertTTL: 24h
    allowedClockSkew: 15m
  accessControl:
    defaultAction: Deny
    trustDomain: ''
    policies:
    - appId: app1
      namespace: default
      operations:
      - name: /op1/*
        httpVerb: [POST, GET]
        action: allow
  api:
    allowed:
    - {name: state, version: v1.0, protocol: http}
    denied:
    - {name: invoke, version: v1, protocol: grpc}
  features:
  - name: ActorStateTTL
    enabled: true
  - name: HotReload
    enabled: false
  nameResolution:
    component: consul
    version: v1
    configuration:
      client: {address: \"127.0.0.1:8500\"}
      selfRegister: true
  components:
    deny: [bindings.smtp]
  logging:
    apiLogging: {enabled: true, obfuscateURLs: true, omitHealthChecks: true}
  httpPipeline:
    handlers:
    - {name: oauth2, type: middleware.http.oauth2}
  appHttpPipeline:
    handlers: []
  workflow:
    maxConcurrentWorkflowInvocations: 100
    stateRetentionPolicy: {completed: 168h}
  unknownField: ignored
",
    );
    let env = |name: &str| match name {
        "RATE" => Some("0.5".to_owned()),
        "ZIPKIN_HOST" => Some("zipkin".to_owned()),
        _ => None,
    };
    let c = load_configuration(&[path], &env).unwrap();
    assert_eq!(c.name, "daprConfig");
    assert_eq!(c.tracing.sampling_rate, "0.5");
    assert_eq!(c.tracing.effective_sampling_rate(), 0.5);
    assert!(c.tracing.stdout);
    assert_eq!(
        c.tracing.zipkin.as_ref().unwrap().endpoint_address,
        "http://zipkin:9411/api/v2/spans"
    );
    let otel = &c.tracing.otel;
    assert_eq!(otel.endpoint_address, "localhost:4317");
    assert!(!otel.is_secure);
    assert_eq!(otel.timeout, Some(Duration::from_secs(10)));
    assert_eq!(otel.headers.len(), 2);
    assert_eq!(otel.headers[0].name, "api-key");
    assert_eq!(
        otel.headers[0].value.as_literal(),
        Some(""),
        "unknown variables expand to \"\""
    );
    assert_eq!(otel.headers[1].value.as_literal(), Some("t1"));
    assert!(!c.metric.enabled);
    assert_eq!(c.metric.latency_distribution_buckets, vec![1.0, 2.0, 5.0]);
    assert!(!c.metric.http.increased_cardinality);
    assert_eq!(
        c.metric.http.path_matching,
        vec!["/orders/{orderID}".to_owned()]
    );
    assert_eq!(c.metric.rules[0].labels[0].regex["orders/"], "orders/.+");
    assert!(c.mtls.enabled);
    assert_eq!(
        c.mtls.workload_cert_ttl,
        Some(Duration::from_secs(24 * 3600))
    );
    assert_eq!(c.mtls.allowed_clock_skew, Some(Duration::from_secs(900)));
    assert_eq!(c.access_control.default_action, AccessAction::Deny);
    assert_eq!(c.access_control.trust_domain, "public");
    assert!(c.access_control.specified);
    let policy = &c.access_control.policies[0];
    assert_eq!(policy.app_id, "app1");
    assert_eq!(policy.default_action, None);
    assert_eq!(
        policy.operations[0].http_verb,
        vec!["POST".to_owned(), "GET".to_owned()]
    );
    assert_eq!(policy.operations[0].action, Some(AccessAction::Allow));
    assert_eq!(c.api.allowed[0].version, "v1.0");
    assert_eq!(c.api.denied[0].protocol, "grpc");
    assert!(c.feature_enabled("ActorStateTTL"));
    assert!(!c.feature_enabled("HotReload"));
    let nr = c.name_resolution.as_ref().unwrap();
    assert_eq!(nr.component, "consul");
    assert_eq!(nr.configuration["client"]["address"], "127.0.0.1:8500");
    assert_eq!(nr.configuration["selfRegister"], true);
    assert_eq!(c.components.deny, vec!["bindings.smtp".to_owned()]);
    assert!(c.logging.api_logging.obfuscate_urls);
    assert_eq!(
        c.http_pipeline.handlers[0].type_name,
        "middleware.http.oauth2"
    );
    assert!(c.app_http_pipeline.handlers.is_empty());
    assert_eq!(c.workflow.max_concurrent_workflow_invocations, Some(100));
    assert_eq!(
        c.workflow.state_retention_policy.completed,
        Some(Duration::from_secs(168 * 3600))
    );
}

#[test]
fn later_configuration_files_override_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.yaml",
        "kind: Configuration
metadata: {name: base}
spec:
  tracing: {samplingRate: \"1\", stdout: true}
  metric: {enabled: false}
  features: [{name: A, enabled: true}]
",
    );
    let over = write(
        dir.path(),
        "over.yaml",
        "kind: Configuration
metadata: {name: over}
spec:
  tracing: {samplingRate: \"0\"}
  metrics: {recordErrorCodes: true}
  features: [{name: B, enabled: true}]
",
    );
    let c = load_configuration(&[base, over], &no_env).unwrap();
    assert_eq!(c.name, "over");
    assert_eq!(c.tracing.sampling_rate, "0");
    assert_eq!(c.tracing.effective_sampling_rate(), 0.0);
    assert!(
        c.tracing.stdout,
        "fields the later file leaves out are kept"
    );
    assert!(!c.metric.enabled);
    assert!(
        c.metric.record_error_codes,
        "`metrics` is an alias of `metric`"
    );
    assert!(!c.feature_enabled("A"), "lists are replaced, not appended");
    assert!(c.feature_enabled("B"));
}

#[test]
fn configuration_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: cfg}
spec:
  mtls:
    workloadCertTTL: $TTL
",
    );
    let env = |name: &str| (name == "TTL").then(|| "forever".to_owned());
    let err = load_configuration(std::slice::from_ref(&path), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: document 1 (Configuration \"cfg\"): spec.mtls.workloadCertTTL: invalid duration 'forever'",
            path.display()
        )),
        "{err}"
    );

    let err = parse_configuration(
        "kind: Configuration
spec:
  secrets:
    scopes:
    - {storeName: vault, defaultAccess: maybe}
",
        Path::new("/c.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.secrets.scopes[0].defaultAccess: invalid action 'maybe'"),
        "{err}"
    );

    let err = parse_configuration(
        "kind: Configuration
spec:
  secrets:
    scopes:
    - {storeName: vault}
    - {storeName: vault}
",
        Path::new("/c.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.secrets.scopes[1].storeName: store \"vault\" is repeated"),
        "{err}"
    );

    let err = parse_configuration(COMPONENT, Path::new("/c.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kind: expected kind Configuration, found Component"),
        "{err}"
    );

    let missing = dir.path().join("nope.yaml");
    let err = load_configuration(std::slice::from_ref(&missing), &no_env).unwrap_err();
    assert_eq!(err.path(), missing);
    assert!(
        err.to_string()
            .contains("cannot read the configuration file"),
        "{err}"
    );
}

#[test]
fn secret_scopes_follow_daprs_rule() {
    let c = parse_configuration(
        "kind: Configuration
spec:
  secrets:
    scopes:
    - storeName: open
      deniedSecrets: [root]
    - storeName: closed
      defaultAccess: DENY
      allowedSecrets: [app-key, both]
      deniedSecrets: [both]
    - storeName: shut
      defaultAccess: deny
",
        Path::new("/c.yaml"),
    )
    .unwrap();
    let open = c.secret_scope("open").unwrap();
    assert_eq!(open.default_access, AccessAction::Allow);
    assert!(open.allows("anything"));
    assert!(!open.allows("root"));
    let closed = c.secret_scope("closed").unwrap();
    assert!(closed.allows("app-key"));
    assert!(!closed.allows("other"));
    assert!(!closed.allows("both"), "denied wins over allowed");
    assert!(!c.secret_allowed("shut", "x"));
    assert!(c.secret_allowed("unscoped-store", "x"));
    let allow_list_overrides_default = SecretScope {
        store_name: "s".into(),
        default_access: AccessAction::Allow,
        allowed_secrets: vec!["a".into()],
        denied_secrets: vec![],
    };
    assert!(allow_list_overrides_default.allows("a"));
    assert!(!allow_list_overrides_default.allows("b"));
}

#[test]
fn sampling_rate_forms() {
    let rate = |text: &str| {
        TracingSpec {
            sampling_rate: text.into(),
            ..TracingSpec::default()
        }
        .effective_sampling_rate()
    };
    assert_eq!(rate("1"), 1.0);
    assert_eq!(rate("0"), 0.0);
    assert_eq!(rate(" 0.25 "), 0.25);
    assert_eq!(rate("7"), 1.0);
    assert_eq!(rate("abc"), DEFAULT_SAMPLING_RATE);
    assert_eq!(rate(""), DEFAULT_SAMPLING_RATE);
    // A number written without quotes is accepted too.
    let c =
        parse_configuration("spec: {tracing: {samplingRate: 1}}", Path::new("/c.yaml")).unwrap();
    assert_eq!(c.tracing.sampling_rate, "1");
}
