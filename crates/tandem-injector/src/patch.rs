//! Builds the JSON Patch (RFC 6902) that adds the `daprd` container to a pod.
//!
//! The operations come in the order Dapr's injector emits them, so tools that diff the two
//! see the same shape: empty lists and maps first, then volumes, the container, the labels,
//! and last the environment and mounts of the app containers.

use serde_json::{Map, Value, json};

use crate::InjectorConfig;
use crate::annotations::SidecarSpec;

/// The injected container's name; a pod that already has it is left alone.
pub const CONTAINER_NAME: &str = "daprd";
/// Where the Unix socket folder is mounted in the sidecar.
const UDS_SIDECAR_PATH: &str = "/var/run/dapr-sockets";
/// The pod volume shared for Unix sockets.
const UDS_VOLUME: &str = "dapr-unix-domain-socket";
/// Where Kubernetes mounts the service-account token the sidecar reads the API with.
const SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether the pod already holds a `daprd` container or init container.
pub fn has_sidecar(pod: &Value) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
}

/// The patch for `pod`, and warnings that do not stop the injection (a volume named by
/// `dapr.io/volume-mounts` that the pod does not have is skipped, as in Dapr).
pub fn build(pod: &Value, spec: &SidecarSpec, cfg: &InjectorConfig) -> (Vec<Value>, Vec<String>) {
    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    let containers = list(pod, "/spec/containers");
    let init_containers = list(pod, "/spec/initContainers");
    let pod_volumes = list(pod, "/spec/volumes");

    if containers.is_empty() && pod.pointer("/spec/containers").is_none() {
        ops.push(add("/spec/containers", json!([])));
    }
    if pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_none()
    {
        ops.push(add("/metadata/labels", json!({})));
    }

    // Volumes.
    let mut new_volumes = Vec::new();
    if spec.unix_domain_socket_path.is_some() {
        new_volumes.push(json!({"name": UDS_VOLUME, "emptyDir": {"medium": "Memory"}}));
    }
    let new_volumes: Vec<Value> = new_volumes
        .into_iter()
        .filter(|v| !pod_volumes.iter().any(|p| p.get("name") == v.get("name")))
        .collect();
    if !new_volumes.is_empty() {
        if pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .is_none()
        {
            ops.push(add("/spec/volumes", Value::Array(new_volumes)));
        } else {
            for v in new_volumes {
                ops.push(add("/spec/volumes/-", v));
            }
        }
    }

    // The container.
    let mounts = sidecar_mounts(spec, &pod_volumes, &containers, &mut warnings);
    let container = container(pod, spec, cfg, mounts);
    if spec.native_sidecar {
        if init_containers.is_empty() {
            ops.push(add("/spec/initContainers", json!([container])));
        } else {
            ops.push(add("/spec/initContainers/-", container));
        }
    } else {
        ops.push(add("/spec/containers/-", container));
    }

    // Labels.
    for (name, value) in [
        ("dapr.io/sidecar-injected", "true".to_owned()),
        ("dapr.io/app-id", spec.app_id.clone()),
        ("dapr.io/metrics-enabled", spec.enable_metrics.to_string()),
    ] {
        ops.push(add(
            &format!("/metadata/labels/{}", escape(name)),
            Value::String(value),
        ));
    }

    // App containers: ports as env (where not already set), then the socket folder.
    let app_env = [
        ("DAPR_HTTP_PORT", spec.http_port.to_string()),
        ("DAPR_GRPC_PORT", spec.grpc_port.to_string()),
        ("APP_PROTOCOL", spec.app_protocol.clone()),
    ];
    for (i, c) in containers.iter().enumerate() {
        let existing = c.get("env").and_then(Value::as_array);
        let missing: Vec<Value> = app_env
            .iter()
            .filter(|(n, _)| {
                !existing.is_some_and(|e| {
                    e.iter()
                        .any(|v| v.get("name").and_then(Value::as_str) == Some(n))
                })
            })
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if existing.is_none() {
            ops.push(add(
                &format!("/spec/containers/{i}/env"),
                Value::Array(missing),
            ));
        } else {
            for v in missing {
                ops.push(add(&format!("/spec/containers/{i}/env/-"), v));
            }
        }
    }
    if let Some(path) = &spec.unix_domain_socket_path {
        for (i, c) in containers.iter().enumerate() {
            let existing = c.get("volumeMounts").and_then(Value::as_array);
            let clash = existing.is_some_and(|m| {
                m.iter().any(|v| {
                    v.get("name").and_then(Value::as_str) == Some(UDS_VOLUME)
                        || v.get("mountPath").and_then(Value::as_str) == Some(path)
                })
            });
            if clash {
                continue;
            }
            let mount = json!({"name": UDS_VOLUME, "mountPath": path});
            if existing.is_none() {
                ops.push(add(
                    &format!("/spec/containers/{i}/volumeMounts"),
                    json!([mount]),
                ));
            } else {
                ops.push(add(&format!("/spec/containers/{i}/volumeMounts/-"), mount));
            }
        }
    }
    (ops, warnings)
}

fn container(pod: &Value, spec: &SidecarSpec, cfg: &InjectorConfig, mounts: Vec<Value>) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), json!(CONTAINER_NAME));
    c.insert(
        "image".into(),
        json!(spec.image.as_deref().unwrap_or(&cfg.sidecar_image)),
    );
    c.insert(
        "imagePullPolicy".into(),
        json!(cfg.sidecar_image_pull_policy),
    );
    c.insert("command".into(), json!(cfg.sidecar_command));
    c.insert("args".into(), json!(args(spec)));
    let mut ports = vec![
        json!({"name": "dapr-http", "containerPort": spec.http_port, "protocol": "TCP"}),
        json!({"name": "dapr-grpc", "containerPort": spec.grpc_port, "protocol": "TCP"}),
        json!({"name": "dapr-internal", "containerPort": spec.internal_grpc_port, "protocol": "TCP"}),
    ];
    if spec.enable_metrics {
        ports.push(
            json!({"name": "dapr-metrics", "containerPort": spec.metrics_port, "protocol": "TCP"}),
        );
    }
    c.insert("ports".into(), Value::Array(ports));
    c.insert("env".into(), Value::Array(env(pod, spec)));
    if !mounts.is_empty() {
        c.insert("volumeMounts".into(), Value::Array(mounts));
    }
    // Tandem serves /v1.0/healthz on its HTTP API port; the probes target it by name.
    c.insert(
        "readinessProbe".into(),
        probe(
            json!({"httpGet": {"path": "/v1.0/healthz", "port": "dapr-http"}}),
            spec.readiness,
        ),
    );
    c.insert(
        "livenessProbe".into(),
        probe(json!({"tcpSocket": {"port": "dapr-http"}}), spec.liveness),
    );
    let mut security = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": spec.seccomp_profile_type},
    });
    if let Some(uid) = cfg.sidecar_run_as_user {
        security["runAsUser"] = json!(uid);
    }
    if let Some(gid) = cfg.sidecar_run_as_group {
        security["runAsGroup"] = json!(gid);
    }
    c.insert("securityContext".into(), security);
    let mut resources = Map::new();
    if !spec.requests.is_empty() {
        resources.insert("requests".into(), json!(spec.requests));
    }
    if !spec.limits.is_empty() {
        resources.insert("limits".into(), json!(spec.limits));
    }
    if !resources.is_empty() {
        c.insert("resources".into(), Value::Object(resources));
    }
    if spec.native_sidecar {
        c.insert("restartPolicy".into(), json!("Always"));
    }
    Value::Object(c)
}

/// The sidecar's flags, as `tandem sidecar` (and daprd) take them.
pub fn args(spec: &SidecarSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: String| {
        a.push(format!("--{name}"));
        a.push(value);
    };
    flag("mode", "kubernetes".into());
    flag("dapr-http-port", spec.http_port.to_string());
    flag("dapr-grpc-port", spec.grpc_port.to_string());
    flag(
        "dapr-internal-grpc-port",
        spec.internal_grpc_port.to_string(),
    );
    if let Some(l) = &spec.listen_addresses {
        flag("dapr-listen-addresses", l.clone());
    }
    flag("app-id", spec.app_id.clone());
    flag("app-protocol", spec.app_protocol.clone());
    flag("log-level", spec.log_level.clone());
    if let Some(p) = spec.app_port {
        flag("app-port", p.to_string());
    }
    if let Some(c) = &spec.config {
        flag("config", c.clone());
    }
    if let Some(n) = spec.app_max_concurrency {
        flag("app-max-concurrency", n.to_string());
    }
    if let Some(addr) = &spec.app_channel_address {
        flag("app-channel-address", addr.clone());
    }
    if spec.enable_metrics {
        flag("metrics-port", spec.metrics_port.to_string());
    }
    if let Some(s) = spec.graceful_shutdown_seconds {
        flag("dapr-graceful-shutdown-seconds", s.to_string());
    }
    if let Some(d) = &spec.block_shutdown_duration {
        flag("dapr-block-shutdown-duration", d.clone());
    }
    if let Some(q) = &spec.max_body_size {
        flag("max-body-size", q.clone());
    }
    if let Some(q) = &spec.read_buffer_size {
        flag("read-buffer-size", q.clone());
    }
    if let Some(n) = spec.http_max_request_size {
        flag("dapr-http-max-request-size", n.to_string());
    }
    if let Some(n) = spec.http_read_buffer_size {
        flag("dapr-http-read-buffer-size", n.to_string());
    }
    if spec.unix_domain_socket_path.is_some() {
        flag("unix-domain-socket", UDS_SIDECAR_PATH.into());
    }
    if let Some(h) = &spec.app_health {
        flag("app-health-check-path", h.path.clone());
        flag("app-health-probe-interval", h.interval.to_string());
        flag("app-health-probe-timeout", h.timeout.to_string());
        flag("app-health-threshold", h.threshold.to_string());
    }
    if let Some(t) = &spec.app_binding_options_timeout {
        flag("app-binding-options-timeout", t.clone());
    }
    if let Some(p) = &spec.placement_host_address {
        flag("placement-host-address", p.clone());
    }
    if let Some(t) = &spec.actors_disseminate_timeout {
        flag("actors-disseminate-timeout", t.clone());
    }
    if let Some(s) = &spec.scheduler_host_address {
        flag("scheduler-host-address", s.clone());
    }
    if let Some(aud) = &spec.sentry_request_jwt_audiences {
        flag("sentry-request-jwt-audiences", aud.clone());
    }
    if let Some(d) = &spec.disable_init_endpoints {
        flag("disable-init-endpoints", d.clone());
    }
    // Booleans as `--flag=<bool>` so an explicit false is passed on too.
    a.push(format!("--enable-metrics={}", spec.enable_metrics));
    for (name, on) in [
        ("log-as-json", spec.log_as_json),
        ("enable-profiling", spec.enable_profiling),
        ("app-ssl", spec.app_ssl),
        ("enable-app-health-check", spec.app_health.is_some()),
        (
            "disable-builtin-k8s-secret-store",
            spec.disable_builtin_k8s_secret_store,
        ),
    ] {
        if on {
            a.push(format!("--{name}"));
        }
    }
    if let Some(v) = spec.enable_api_logging {
        a.push(format!("--enable-api-logging={v}"));
    }
    a
}

fn env(pod: &Value, spec: &SidecarSpec) -> Vec<Value> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let mut env = vec![
        field("NAMESPACE", "metadata.namespace"),
        field("POD_NAME", "metadata.name"),
        field("DAPR_HOST_IP", "status.podIP"),
    ];
    if let Some(sa) = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
    {
        env.push(json!({"name": "SERVICE_ACCOUNT_NAME", "value": sa}));
    }
    let secret = |name: &str, secret: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    if let Some(s) = &spec.api_token_secret {
        env.push(secret("DAPR_API_TOKEN", s, "token"));
    }
    if let Some(s) = &spec.app_token_secret {
        env.push(secret("APP_API_TOKEN", s, "token"));
    }
    for (name, value) in &spec.env {
        env.push(json!({"name": name, "value": value}));
    }
    for (name, s, key) in &spec.env_from_secret {
        env.push(secret(name, s, key));
    }
    let keys: Vec<&str> = spec
        .env
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(spec.env_from_secret.iter().map(|(n, _, _)| n.as_str()))
        .collect();
    if !keys.is_empty() {
        env.push(json!({"name": "DAPR_ENV_KEYS", "value": keys.join(" ")}));
    }
    env
}

/// The sidecar's mounts: the service-account token the API server's admission already gave
/// the app containers (webhooks run after it, so the new container would otherwise have
/// none), the socket folder, and the annotated pod volumes.
fn sidecar_mounts(
    spec: &SidecarSpec,
    pod_volumes: &[Value],
    containers: &[Value],
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let mut mounts = Vec::new();
    let token = containers
        .iter()
        .filter_map(|c| c.get("volumeMounts").and_then(Value::as_array))
        .flatten()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(SA_TOKEN_PATH));
    if let Some(t) = token {
        mounts.push(t.clone());
    }
    if spec.unix_domain_socket_path.is_some() {
        mounts.push(json!({"name": UDS_VOLUME, "mountPath": UDS_SIDECAR_PATH}));
    }
    for (list, read_only) in [(&spec.volume_mounts, true), (&spec.volume_mounts_rw, false)] {
        for (vol, path) in list {
            let exists = pod_volumes
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(vol));
            if exists {
                mounts.push(json!({"name": vol, "mountPath": path, "readOnly": read_only}));
            } else {
                warnings.push(format!(
                    "dapr.io/volume-mounts: the pod has no volume '{vol}'; it is not mounted into the sidecar"
                ));
            }
        }
    }
    mounts
}

fn probe(mut handler: Value, p: crate::annotations::Probe) -> Value {
    handler["initialDelaySeconds"] = json!(p.delay);
    handler["timeoutSeconds"] = json!(p.timeout);
    handler["periodSeconds"] = json!(p.period);
    handler["failureThreshold"] = json!(p.threshold);
    handler
}

fn list(pod: &Value, pointer: &str) -> Vec<Value> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// JSON Pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
