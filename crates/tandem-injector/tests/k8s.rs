//! Offline Kubernetes validation, no cluster needed:
//! - every pod the injector patches passes the strict Kubernetes JSON schemas
//!   (`kubernetes-validate` from PyPI);
//! - the Helm chart in deploy/helm/tandem renders with Helm's own engine (`helm-python-sdk`
//!   from PyPI, Helm's Go SDK as a library) and every rendered object passes the same schemas;
//! - the chart's CRDs are structural and accept Dapr resources as users write them.
//!
//! The tools are installed by this test into a virtualenv in tests/k8s/.venv. Without python3
//! or the package index the tests are skipped with one line, unless TANDEM_REQUIRE_SERVICES=1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Value, json};
use tandem_injector::{InjectorConfig, review};

const K8S_VERSIONS: &[&str] = &["1.29.0", "1.33.0"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn k8s_dir() -> PathBuf {
    repo().join("tests/k8s")
}

fn required() -> bool {
    std::env::var("TANDEM_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// The virtualenv's python, installing the tools once per test run.
fn python() -> Option<PathBuf> {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let dir = k8s_dir();
        let py = dir.join(".venv/bin/python");
        let importable = |py: &Path| {
            Command::new(py)
                .args([
                    "-c",
                    "import kubernetes_validate, helm_python, jsonschema, yaml",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if importable(&py) {
            return Ok(py);
        }
        let venv = Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("python3 is not available ({e})"))?;
        if !venv.status.success() {
            return Err(format!(
                "python3 -m venv failed: {}",
                String::from_utf8_lossy(&venv.stderr).trim()
            ));
        }
        let pip = Command::new(dir.join(".venv/bin/pip"))
            .args(["install", "-q", "-r", "requirements.txt"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("pip: {e}"))?;
        if !pip.status.success() || !importable(&py) {
            return Err(format!(
                "pip install -r tests/k8s/requirements.txt failed: {}",
                String::from_utf8_lossy(&pip.stderr).trim()
            ));
        }
        Ok(py)
    });
    match ready {
        Ok(p) => Some(p.clone()),
        Err(e) if required() => panic!("{e} and TANDEM_REQUIRE_SERVICES=1"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Runs tests/k8s/check.py; returns success and stdout.
fn check(py: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(py)
        .arg(k8s_dir().join("check.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "check.py {args:?} crashed: {stdout}\n{stderr}"
    );
    (out.status.success(), stdout)
}

/// The fixture's pod after the injector's patch, named as the API server would name it.
fn patched(fixture: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let input: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let out = review(
        &InjectorConfig::new("ghcr.io/tandem-runtime/tandem:0.1.0"),
        &serde_json::to_vec(&input).unwrap(),
    )
    .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(out["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut pod = input["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    // kubernetes-validate needs a name; the API server sets it from generateName after
    // admission.
    let generate = pod["metadata"]["generateName"].as_str().unwrap_or("pod-");
    pod["metadata"]["name"] = json!(format!("{generate}x7k2p"));
    pod
}

#[test]
fn patched_pods_pass_the_kubernetes_schemas() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for fixture in [
        "replicaset-pod.json",
        "job-pod-native-sidecar.json",
        "v1beta1.json",
    ] {
        let path = dir.path().join(fixture);
        std::fs::write(&path, serde_json::to_vec(&patched(fixture)).unwrap()).unwrap();
        files.push(path.to_string_lossy().into_owned());
    }
    for version in K8S_VERSIONS {
        let mut args = vec!["validate", version];
        args.extend(files.iter().map(String::as_str));
        let (ok, out) = check(&py, &args);
        assert!(ok, "k8s {version}:\n{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 3);
    }

    // The check can fail: a string where a port number belongs, and an unknown field.
    let mut broken = patched("replicaset-pod.json");
    let containers = broken["spec"]["containers"].as_array_mut().unwrap();
    let daprd = containers
        .iter_mut()
        .find(|c| c["name"] == "daprd")
        .unwrap();
    daprd["ports"][0]["containerPort"] = json!("3500");
    daprd["readinessProbes"] = json!({});
    let path = dir.path().join("broken.json");
    std::fs::write(&path, serde_json::to_vec(&broken).unwrap()).unwrap();
    let (ok, out) = check(&py, &["validate", "1.33.0", path.to_str().unwrap()]);
    assert!(!ok, "a broken pod passed:\n{out}");
    assert!(out.starts_with("invalid "), "{out}");
}

fn render(py: &Path, values: Option<Value>) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered.json");
    let chart = repo().join("deploy/helm/tandem");
    let mut args = vec![
        "render".to_owned(),
        chart.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    ];
    if let Some(v) = values {
        let path = dir.path().join("values.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        args.push(path.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout) = check(py, &args);
    assert!(ok, "helm render failed:\n{stdout}");
    let lint = stdout.lines().find(|l| l.starts_with("lint ")).unwrap();
    let lint: Value = serde_json::from_str(&lint[5..]).unwrap();
    assert_eq!(lint["errors"], json!([]), "helm lint: {lint}");
    for m in lint["messages"].as_array().unwrap() {
        // Severity 1 is informational (e.g. "icon is recommended").
        assert!(m["severity"].as_u64().unwrap() <= 1, "helm lint: {m}");
    }
    let docs: Vec<Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for version in K8S_VERSIONS {
        let (ok, report) = check(py, &["validate", version, out.to_str().unwrap()]);
        assert!(ok, "rendered chart against k8s {version}:\n{report}");
        assert_eq!(
            report.lines().filter(|l| l.starts_with("ok ")).count(),
            docs.len()
        );
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn helm_chart_renders_valid_manifests() {
    let Some(py) = python() else { return };
    let docs = render(&py, None);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "CustomResourceDefinition/components.dapr.io",
        "CustomResourceDefinition/configurations.dapr.io",
        "CustomResourceDefinition/resiliencies.dapr.io",
        "CustomResourceDefinition/subscriptions.dapr.io",
        "CustomResourceDefinition/httpendpoints.dapr.io",
        "Deployment/tandem-sidecar-injector",
        "Service/tandem-sidecar-injector",
        "Secret/tandem-sidecar-injector-tls",
        "MutatingWebhookConfiguration/tandem-sidecar-injector",
        "Deployment/tandem-operator",
        "ClusterRole/tandem-operator",
        "ClusterRole/tandem-sidecar",
        "RoleBinding/tandem-sidecar-default",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }

    // The webhook: never blocks pods, v1 only, no side effects, pods on CREATE.
    let mwc = find(
        &docs,
        "MutatingWebhookConfiguration",
        "tandem-sidecar-injector",
    );
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        hook["rules"][0],
        json!({"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "Namespaced"})
    );
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"name": "tandem-sidecar-injector", "namespace": "tandem-system", "path": "/mutate", "port": 443})
    );
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(excluded["values"], json!(["kube-system", "tandem-system"]));
    assert!(hook["objectSelector"].is_object());

    // The generated certificate: caBundle is the CA in the Secret, all PEM.
    let secret = find(&docs, "Secret", "tandem-sidecar-injector-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let b64 = |v: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(secret["data"]["ca.crt"], hook["clientConfig"]["caBundle"]);
    assert!(b64(&hook["clientConfig"]["caBundle"]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(b64(&secret["data"]["tls.crt"]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(b64(&secret["data"]["tls.key"]).contains("PRIVATE KEY-----"));
    // The injector serves the pair Helm generated (an RSA key in PKCS#1 PEM).
    let tls = tempfile::tempdir().unwrap();
    std::fs::write(tls.path().join("tls.crt"), b64(&secret["data"]["tls.crt"])).unwrap();
    std::fs::write(tls.path().join("tls.key"), b64(&secret["data"]["tls.key"])).unwrap();
    let pair = tandem_injector::server::ReloadingCert::load(
        &tls.path().join("tls.crt"),
        &tls.path().join("tls.key"),
    )
    .expect("the chart's certificate loads");
    tandem_injector::server::tls_config(std::sync::Arc::new(pair)).unwrap();

    // The injector: runs `tandem injector` on the Secret, reads nothing from the API.
    let inj = find(&docs, "Deployment", "tandem-sidecar-injector");
    let pod = &inj["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["command"], json!(["/tandem", "injector"]));
    assert!(c["env"].as_array().unwrap().contains(
        &json!({"name": "SIDECAR_IMAGE", "value": "ghcr.io/tandem-runtime/tandem:0.1.0"})
    ));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    for d in &docs {
        if matches!(
            d["kind"].as_str(),
            Some("RoleBinding" | "ClusterRoleBinding")
        ) {
            for s in d["subjects"].as_array().unwrap() {
                assert_ne!(
                    s["name"], "tandem-sidecar-injector",
                    "the injector needs no API access"
                );
            }
        }
    }

    // Sidecars: read-only access to the dapr.io kinds and Secrets, bound per namespace.
    let role = find(&docs, "ClusterRole", "tandem-sidecar");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]));
    }
    let binding = find(&docs, "RoleBinding", "tandem-sidecar-default");
    assert_eq!(binding["metadata"]["namespace"], "default");

    // The operator may write Services, and nothing else.
    let op = find(&docs, "ClusterRole", "tandem-operator");
    for rule in op["rules"].as_array().unwrap() {
        let writes = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| !matches!(v.as_str(), Some("get" | "list" | "watch")));
        if writes {
            assert_eq!(rule["resources"], json!(["services"]));
        }
    }
    let op = find(&docs, "Deployment", "tandem-operator");
    assert_eq!(
        op["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["/tandem", "operator"])
    );
}

#[test]
fn helm_chart_with_an_existing_certificate_and_options() {
    let Some(py) = python() else { return };
    let docs = render(
        &py,
        Some(json!({
            "image": {"tag": "1.2.3"},
            "injector": {
                "tls": {"existingSecret": "injector-cert", "caBundle": "Q0E="},
                "namespaceSelector": {"matchLabels": {"tandem.dev/inject": "enabled"}},
                "allowedServiceAccounts": ["ci:argo-*", "tools:runner"],
            },
            "operator": {"enabled": false},
            "sidecarRBAC": {"bindings": [
                {"namespace": "shop", "serviceAccount": "orders"},
                {"namespace": "billing", "serviceAccount": "default"},
            ]},
        })),
    );
    assert!(!docs.iter().any(|d| d["kind"] == "Secret"));
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "tandem-operator")
    );
    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "tandem-sidecar-injector",
    )["webhooks"][0];
    assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchLabels": {"tandem.dev/inject": "enabled"}})
    );
    let inj = find(&docs, "Deployment", "tandem-sidecar-injector");
    let pod = &inj["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "injector-cert");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.contains(
            &json!({"name": "ALLOWED_SERVICE_ACCOUNTS", "value": "ci:argo-*,tools:runner"})
        )
    );
    assert!(env.contains(
        &json!({"name": "SIDECAR_IMAGE", "value": "ghcr.io/tandem-runtime/tandem:1.2.3"})
    ));
    find(&docs, "RoleBinding", "tandem-sidecar-orders");
    assert_eq!(
        docs.iter().filter(|d| d["kind"] == "RoleBinding").count(),
        2
    );
}

/// A structural schema (what the API server demands of a CRD): every node says its type,
/// unless it keeps unknown fields or is int-or-string.
fn assert_structural(node: &Value, at: &str) {
    let obj = node.as_object().unwrap();
    let escaped = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    assert!(
        obj.contains_key("type") || escaped,
        "{at}: no type and no x-kubernetes-preserve-unknown-fields"
    );
    for forbidden in ["$ref", "additionalItems", "definitions", "dependencies"] {
        assert!(
            !obj.contains_key(forbidden),
            "{at}: {forbidden} is not allowed"
        );
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{at}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{at}[]"));
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(ap, &format!("{at}{{}}"));
    }
}

#[test]
fn crds_are_structural_and_accept_dapr_resources() {
    let Some(py) = python() else { return };
    let crd_dir = repo().join("deploy/helm/tandem/crds");
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(&crd_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: Value = serde_norway::from_str(&text).unwrap();
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let at = format!(
                "{}/{}",
                crd["metadata"]["name"].as_str().unwrap(),
                v["name"].as_str().unwrap()
            );
            assert_structural(&v["schema"]["openAPIV3Schema"], &at);
        }
        crds.push(crd);
    }
    assert_eq!(crds.len(), 5);
    let storage: usize = crds
        .iter()
        .map(|c| {
            c["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["storage"] == true)
                .count()
        })
        .sum();
    assert_eq!(storage, 5, "one storage version per CRD");

    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("crds.json");
    std::fs::write(&all, serde_json::to_vec(&crds).unwrap()).unwrap();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let good = fixtures.join("dapr-resources.yaml");
    let (ok, out) = check(
        &py,
        &["accepts", all.to_str().unwrap(), good.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        7,
        "{out}"
    );

    let bad = fixtures.join("dapr-resources-invalid.yaml");
    let (ok, out) = check(
        &py,
        &["accepts", all.to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("invalid ")).count(),
        5,
        "{out}"
    );
}
