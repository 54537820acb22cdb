//! AdmissionReview in, AdmissionReview out.
//!
//! The decision never blocks a pod: every answer is `allowed: true`. A pod that should not get
//! a sidecar (not enabled, caller not trusted, already injected, bad annotation values) is
//! admitted unchanged, with the reason in `warnings` where the user should see it.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{InjectorConfig, annotations, patch};

/// A request the webhook cannot answer: the HTTP status and a message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// 400 or 415.
    pub status: u16,
    /// What was wrong.
    pub message: String,
}

impl BadRequest {
    fn new(message: impl Into<String>) -> Self {
        BadRequest {
            status: 400,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<Gvk>,
    namespace: Option<String>,
    name: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    user_info: UserInfo,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize, Default)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// What the webhook decided, before it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The JSON Patch operations (empty: the pod is admitted unchanged).
    pub patch: Vec<Value>,
    /// Messages for `response.warnings`.
    pub warnings: Vec<String>,
}

/// Answers one AdmissionReview body. `Err` is for bodies that are not an AdmissionReview.
pub fn review(cfg: &InjectorConfig, body: &[u8]) -> Result<Value, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadRequest::new("empty body: expected an AdmissionReview"));
    }
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| BadRequest::new(format!("the body is not an AdmissionReview: {e}")))?;
    if review.kind != "AdmissionReview"
        || !matches!(
            review.api_version.as_str(),
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(BadRequest::new(format!(
            "expected kind AdmissionReview of admission.k8s.io/v1 or v1beta1, got {} {}",
            review.api_version, review.kind
        )));
    }
    let Some(request) = review.request else {
        return Err(BadRequest::new("the AdmissionReview has no request"));
    };
    if request.uid.is_empty() {
        return Err(BadRequest::new("request.uid is empty"));
    }
    let decision = decide(cfg, &request)?;
    let mut response = json!({"uid": request.uid, "allowed": true});
    if !decision.patch.is_empty() {
        let bytes = serde_json::to_vec(&decision.patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if !decision.warnings.is_empty() {
        response["warnings"] = json!(decision.warnings);
    }
    Ok(json!({
        "apiVersion": review.api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn decide(cfg: &InjectorConfig, req: &Request) -> Result<Decision, BadRequest> {
    let none = Decision {
        patch: Vec::new(),
        warnings: Vec::new(),
    };
    let kind = req.kind.as_ref().map(|k| k.kind.as_str()).unwrap_or("");
    if kind != "Pod" {
        return Ok(none);
    }
    if req
        .operation
        .as_deref()
        .is_some_and(|op| !op.eq_ignore_ascii_case("CREATE"))
    {
        return Ok(none);
    }
    let pod = match &req.object {
        Some(p @ Value::Object(_)) => p,
        _ => return Err(BadRequest::new("request.object is not a Pod object")),
    };
    let ann = annotations::of_pod(pod);
    if !annotations::enabled(&ann) {
        return Ok(none);
    }
    let ns = req.namespace.as_deref().unwrap_or("");
    let name = req
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            pod.pointer("/metadata/generateName")
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    if !cfg.caller_allowed(&req.user_info.username, &req.user_info.groups) {
        info!(
            namespace = ns,
            pod = name,
            user = %req.user_info.username,
            "pod asks for a sidecar, but its creator is not an allowed controller or service account; admitted without one"
        );
        return Ok(none);
    }
    if patch::has_sidecar(pod) {
        debug!(
            namespace = ns,
            pod = name,
            "pod already has a daprd container"
        );
        return Ok(none);
    }
    let spec = match annotations::parse(&ann, pod) {
        Ok(s) => s,
        Err(errors) => {
            let mut warnings = vec![format!(
                "tandem: the pod was admitted without its Dapr sidecar: {} invalid dapr.io annotation value(s)",
                errors.len()
            )];
            warn!(namespace = ns, pod = name, errors = ?errors, "invalid dapr.io annotations: no sidecar injected");
            warnings.extend(errors);
            return Ok(Decision {
                patch: Vec::new(),
                warnings,
            });
        }
    };
    let (ops, warnings) = patch::build(pod, &spec, cfg);
    for w in &warnings {
        warn!(namespace = ns, pod = name, "{w}");
    }
    info!(namespace = ns, pod = name, app_id = %spec.app_id, "injecting the daprd sidecar");
    Ok(Decision {
        patch: ops,
        warnings,
    })
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("kube-system:*", "kube-system:job-controller"));
        assert!(glob_match("*:argo-*", "ci:argo-workflow"));
        assert!(!glob_match("kube-system:*", "default:default"));
        assert!(glob_match("a", "a"));
        assert!(!glob_match("a", "ab"));
    }
}
