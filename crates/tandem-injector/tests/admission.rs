//! AdmissionReview fixtures shaped like the kube-apiserver's requests go through the webhook's
//! handler; each patch is checked operation by operation and then applied to the pod.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use tandem_injector::{InjectorConfig, review};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn cfg() -> InjectorConfig {
    InjectorConfig::new("ghcr.io/tandem-runtime/tandem:0.1.0")
}

/// Runs the fixture through the handler; returns the response, the patch ops and the patched pod.
fn run(name: &str) -> (Value, Vec<Value>, Value) {
    let input = fixture(name);
    let body = serde_json::to_vec(&input).unwrap();
    let out = review(&cfg(), &body).expect("answered");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["apiVersion"], input["apiVersion"]);
    let resp = &out["response"];
    assert_eq!(resp["uid"], input["request"]["uid"]);
    assert_eq!(resp["allowed"], true);
    let mut pod = input["request"]["object"].clone();
    let ops: Vec<Value> = match resp.get("patch") {
        None => Vec::new(),
        Some(p) => {
            assert_eq!(resp["patchType"], "JSONPatch");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().expect("patch is a base64 string"))
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        }
    };
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    (out, ops, pod)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env_of(c: &Value) -> Vec<(String, Value)> {
    c["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_owned(),
                        v.get("value")
                            .cloned()
                            .unwrap_or_else(|| v["valueFrom"].clone()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn arg_after<'a>(args: &'a [Value], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(Value::as_str)
}

#[test]
fn replicaset_pod_gets_the_sidecar() {
    let (out, ops, pod) = run("replicaset-pod.json");
    assert!(out["response"].get("warnings").is_none(), "{out}");
    let paths: Vec<(&str, &str)> = ops
        .iter()
        .map(|o| (o["op"].as_str().unwrap(), o["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("add", "/spec/containers/-"),
            ("add", "/metadata/labels/dapr.io~1sidecar-injected"),
            ("add", "/metadata/labels/dapr.io~1app-id"),
            ("add", "/metadata/labels/dapr.io~1metrics-enabled"),
            // `orders` already sets DAPR_HTTP_PORT: only the two missing variables are added.
            ("add", "/spec/containers/0/env/-"),
            ("add", "/spec/containers/0/env/-"),
            // `log-shipper` has no env list at all.
            ("add", "/spec/containers/1/env"),
        ]
    );

    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["dapr.io/sidecar-injected"], "true");
    assert_eq!(labels["dapr.io/app-id"], "orders");
    assert_eq!(labels["dapr.io/metrics-enabled"], "true");
    assert_eq!(labels["app"], "orders");

    let d = container(&pod, "containers", "daprd");
    assert_eq!(d["image"], "ghcr.io/tandem-runtime/tandem:0.1.0");
    assert_eq!(d["imagePullPolicy"], "IfNotPresent");
    assert_eq!(d["command"], json!(["/tandem", "sidecar"]));
    let args = d["args"].as_array().unwrap();
    assert_eq!(arg_after(args, "--mode"), Some("kubernetes"));
    // No dapr.io/app-id: the Deployment's name, from generateName minus the template hash.
    assert_eq!(arg_after(args, "--app-id"), Some("orders"));
    assert_eq!(arg_after(args, "--app-port"), Some("8080"));
    assert_eq!(arg_after(args, "--app-protocol"), Some("http"));
    assert_eq!(arg_after(args, "--config"), Some("appconfig"));
    assert_eq!(arg_after(args, "--log-level"), Some("debug"));
    assert_eq!(arg_after(args, "--app-max-concurrency"), Some("10"));
    assert_eq!(arg_after(args, "--metrics-port"), Some("9090"));
    assert_eq!(arg_after(args, "--dapr-http-port"), Some("3500"));
    assert_eq!(arg_after(args, "--dapr-grpc-port"), Some("50001"));
    assert_eq!(arg_after(args, "--dapr-internal-grpc-port"), Some("50002"));
    assert_eq!(
        arg_after(args, "--dapr-graceful-shutdown-seconds"),
        Some("20")
    );
    assert_eq!(arg_after(args, "--app-health-check-path"), Some("/health"));
    assert_eq!(arg_after(args, "--app-health-probe-interval"), Some("3"));
    assert_eq!(arg_after(args, "--app-health-probe-timeout"), Some("500"));
    assert_eq!(arg_after(args, "--app-health-threshold"), Some("3"));
    for flag in [
        "--log-as-json",
        "--enable-app-health-check",
        "--enable-metrics=true",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
    }

    let ports: Vec<(String, u64)> = d["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("dapr-http".into(), 3500),
            ("dapr-grpc".into(), 50001),
            ("dapr-internal".into(), 50002),
            ("dapr-metrics".into(), 9090)
        ]
    );

    assert_eq!(
        d["readinessProbe"],
        json!({"httpGet": {"path": "/v1.0/healthz", "port": "dapr-http"}, "initialDelaySeconds": 1, "timeoutSeconds": 1, "periodSeconds": 1, "failureThreshold": 5})
    );
    assert_eq!(
        d["livenessProbe"],
        json!({"tcpSocket": {"port": "dapr-http"}, "initialDelaySeconds": 30, "timeoutSeconds": 3, "periodSeconds": 10, "failureThreshold": 5})
    );
    assert_eq!(
        d["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        d["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    // The service-account token the app containers got from the API server, for the
    // sidecar's own API calls.
    assert_eq!(
        d["volumeMounts"],
        json!([{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}])
    );

    let env = env_of(d);
    let get = |n: &str| {
        env.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no env {n}"))
    };
    assert_eq!(
        get("NAMESPACE"),
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}})
    );
    assert_eq!(
        get("POD_NAME"),
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}})
    );
    assert_eq!(
        get("DAPR_API_TOKEN"),
        json!({"secretKeyRef": {"name": "dapr-api-token", "key": "token"}})
    );
    assert_eq!(
        get("APP_API_TOKEN"),
        json!({"secretKeyRef": {"name": "app-api-token", "key": "token"}})
    );
    assert_eq!(get("GOMEMLIMIT"), json!("200MiB"));
    assert_eq!(get("LIST"), json!("a,b"));
    assert_eq!(get("DAPR_ENV_KEYS"), json!("GOMEMLIMIT LIST"));

    // App containers: their own DAPR_HTTP_PORT is kept; the rest is added.
    let app = env_of(container(&pod, "containers", "orders"));
    assert_eq!(
        app,
        vec![
            ("DAPR_HTTP_PORT".into(), json!("3500")),
            ("DAPR_GRPC_PORT".into(), json!("50001")),
            ("APP_PROTOCOL".into(), json!("http")),
        ]
    );
    assert_eq!(
        env_of(container(&pod, "containers", "log-shipper")).len(),
        3
    );
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 3);
}

#[test]
fn job_pod_native_sidecar_with_sockets_and_mounts() {
    let (out, ops, pod) = run("job-pod-native-sidecar.json");
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        vec![
            "/metadata/labels",
            "/spec/volumes/-",
            "/spec/initContainers",
            "/metadata/labels/dapr.io~1sidecar-injected",
            "/metadata/labels/dapr.io~1app-id",
            "/metadata/labels/dapr.io~1metrics-enabled",
            "/spec/containers/0/env",
            "/spec/containers/0/volumeMounts/-",
        ]
    );
    // The missing volume is skipped and reported, not fatal.
    let warnings = out["response"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].as_str().unwrap().contains("missing"));

    assert_eq!(pod["metadata"]["labels"]["dapr.io/app-id"], "reports");
    assert_eq!(
        pod["metadata"]["labels"]["dapr.io/metrics-enabled"],
        "false"
    );
    let d = container(&pod, "initContainers", "daprd");
    assert_eq!(d["restartPolicy"], "Always");
    let args = d["args"].as_array().unwrap();
    assert_eq!(arg_after(args, "--app-id"), Some("reports"));
    assert_eq!(arg_after(args, "--app-protocol"), Some("grpc"));
    assert_eq!(arg_after(args, "--app-port"), Some("50051"));
    assert_eq!(
        arg_after(args, "--unix-domain-socket"),
        Some("/var/run/dapr-sockets")
    );
    assert!(args.iter().any(|a| a == "--enable-metrics=false"));
    assert!(arg_after(args, "--metrics-port").is_none());
    assert_eq!(d["ports"].as_array().unwrap().len(), 3);
    assert_eq!(d["securityContext"]["seccompProfile"]["type"], "Unconfined");
    let mounts: Vec<&str> = d["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        vec![
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/var/run/dapr-sockets",
            "/mnt/scratch"
        ]
    );
    assert!(env_of(d).contains(&(
        "DB_PASSWORD".into(),
        json!({"secretKeyRef": {"name": "db-creds", "key": "password"}})
    )));
    assert!(
        pod["spec"]["volumes"].as_array().unwrap().contains(
            &json!({"name": "dapr-unix-domain-socket", "emptyDir": {"medium": "Memory"}})
        )
    );
    let app = container(&pod, "containers", "report");
    assert!(
        app["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "dapr-unix-domain-socket", "mountPath": "/tmp/dapr"}))
    );
    assert_eq!(
        env_of(app),
        vec![
            ("DAPR_HTTP_PORT".into(), json!("3500")),
            ("DAPR_GRPC_PORT".into(), json!("50001")),
            ("APP_PROTOCOL".into(), json!("grpc")),
        ]
    );
}

#[test]
fn pods_left_alone() {
    for name in [
        "disabled.json",
        "kubectl-run-by-user.json",
        "already-injected.json",
        "not-a-pod.json",
    ] {
        let (out, ops, _) = run(name);
        assert!(ops.is_empty(), "{name}: {ops:?}");
        let resp = out["response"].as_object().unwrap();
        assert!(!resp.contains_key("patch"), "{name}");
        assert!(!resp.contains_key("patchType"), "{name}");
        assert!(!resp.contains_key("warnings"), "{name}");
    }
}

#[test]
fn allowed_service_accounts_and_masters() {
    let mut input = fixture("kubectl-run-by-user.json");
    input["request"]["userInfo"] =
        json!({"username": "system:serviceaccount:ci:argo-runner", "groups": []});
    let body = serde_json::to_vec(&input).unwrap();
    let out = review(&cfg(), &body).unwrap();
    assert!(out["response"].get("patch").is_none());
    let mut c = cfg();
    c.allowed_service_accounts = vec!["ci:argo-*".into()];
    let out = review(&c, &body).unwrap();
    assert!(out["response"].get("patch").is_some());

    input["request"]["userInfo"] = json!({"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]});
    let out = review(&cfg(), &serde_json::to_vec(&input).unwrap()).unwrap();
    assert!(out["response"].get("patch").is_some());
}

#[test]
fn invalid_annotations_admit_without_sidecar_and_warn() {
    let (out, ops, _) = run("invalid-annotations.json");
    assert!(ops.is_empty());
    let resp = &out["response"];
    assert!(resp.get("patch").is_none());
    let warnings: Vec<&str> = resp["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("without its Dapr sidecar"));
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("dapr.io/app-port") && w.contains("abc"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("dapr.io/sidecar-cpu-limit") && w.contains("two cores"))
    );
}

#[test]
fn v1beta1_is_echoed() {
    let (out, ops, _) = run("v1beta1.json");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1beta1");
    assert!(!ops.is_empty());
}

#[test]
fn reinvocation_is_idempotent() {
    let (_, _, pod) = run("replicaset-pod.json");
    let mut input = fixture("replicaset-pod.json");
    input["request"]["object"] = pod;
    let out = review(&cfg(), &serde_json::to_vec(&input).unwrap()).unwrap();
    assert!(out["response"].get("patch").is_none());
}

#[test]
fn malformed_bodies_are_rejected_clearly() {
    let c = cfg();
    for (body, needle) in [
        (&b""[..], "empty body"),
        (&b"   "[..], "empty body"),
        (&b"{not json"[..], "not an AdmissionReview"),
        (&b"[]"[..], "not an AdmissionReview"),
        (
            &br#"{"apiVersion":"v1","kind":"Pod"}"#[..],
            "expected kind AdmissionReview",
        ),
        (
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#[..],
            "no request",
        ),
        (
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{"kind":"Pod"}}}"#[..],
            "uid is empty",
        ),
        (
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod"},"object":"pod"}}"#[..],
            "not a Pod object",
        ),
    ] {
        let e = review(&c, body).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
    }
}
