//! Configuration `spec.api.allowed` / `spec.api.denied`: which Dapr APIs the app may call.
//!
//! The rules are turned into decisions once, when the servers are built, so a request never
//! matches rule strings:
//!
//! * HTTP (`protocol: http`): an endpoint is registered only when allowed. A rule matches an
//!   endpoint when `<version>/<name>` equals the endpoint's group (`v1/state`,
//!   `v1alpha1/lock`, …) or when the endpoint's path (`v1.0/state/{storeName}/{key}`) starts
//!   with it, so `version: v1.0, name: state` works too. A blocked endpoint is simply absent:
//!   its requests reach the service-invocation fallback (404 `ERR_DIRECT_INVOKE` without an
//!   app id), and when `invoke` itself is blocked, a plain `404 page not found`. The health
//!   endpoints are always served.
//! * gRPC (`protocol: grpc`): a rule `name`+`version` names a fixed set of
//!   `dapr.proto.runtime.v1.Dapr` methods (`state.v1` ⇒ `GetState`, `SaveState`, …); a blocked
//!   method answers `UNIMPLEMENTED` (`Not Implemented`, detail `requested endpoint is not
//!   available`). Other services (gRPC proxying) are never filtered. Rules naming no known
//!   group are ignored; with no usable rule the filter is not installed at all.
//!
//! Denied wins over allowed; an empty allow list allows everything.

use std::collections::HashSet;

/// One rule as written in the Configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiRule {
    /// The API group (`state`, `invoke`, …).
    pub name: String,
    /// The version (`v1`, `v1.0`, `v1alpha1`, …).
    pub version: String,
    /// `http` or `grpc`.
    pub protocol: String,
}

/// `spec.api` of the Configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiRules {
    /// `allowed` (empty = all).
    pub allowed: Vec<ApiRule>,
    /// `denied` (wins over `allowed`).
    pub denied: Vec<ApiRule>,
}

impl ApiRules {
    /// Whether no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty() && self.denied.is_empty()
    }

    /// The HTTP decisions.
    pub(crate) fn http(&self) -> HttpRules {
        // daprd compares the protocol case-insensitively for HTTP.
        let keys = |rules: &[ApiRule]| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.protocol.eq_ignore_ascii_case("http"))
                .map(|r| format!("{}/{}", r.version, r.name))
                .collect()
        };
        HttpRules {
            allowed: keys(&self.allowed),
            denied: keys(&self.denied),
        }
    }

    /// The gRPC filter, or `None` when no gRPC rule names a known group.
    pub(crate) fn grpc(&self) -> Option<GrpcFilter> {
        let methods = |rules: &[ApiRule]| -> HashSet<String> {
            rules
                .iter()
                .filter(|r| r.protocol == "grpc")
                .filter_map(|r| grpc_group(&r.name, &r.version))
                .flat_map(|methods| methods.iter())
                .map(|m| format!("{GRPC_PREFIX}{m}"))
                .collect()
        };
        let allowed = methods(&self.allowed);
        let denied = methods(&self.denied);
        if allowed.is_empty() && denied.is_empty() {
            return None;
        }
        Some(GrpcFilter {
            allowed: (!allowed.is_empty()).then_some(allowed),
            denied,
        })
    }
}

/// An HTTP endpoint's group, as daprd names it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
}

/// The HTTP rules as `<version>/<name>` keys.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpRules {
    allowed: Vec<String>,
    denied: Vec<String>,
}

impl HttpRules {
    /// Whether the endpoint of `group` at `path` (`v1.0/state/{storeName}`, daprd's template)
    /// is served.
    pub(crate) fn allows(&self, group: Group, path: &str) -> bool {
        if group.name == "healthz" {
            return true;
        }
        let matches = |keys: &[String]| {
            keys.iter().any(|k| {
                k.strip_prefix(group.version)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|name| name == group.name)
                    || path.starts_with(k.as_str())
            })
        };
        if !self.denied.is_empty() && matches(&self.denied) {
            return false;
        }
        self.allowed.is_empty() || matches(&self.allowed)
    }
}

const GRPC_PREFIX: &str = "/dapr.proto.runtime.v1.Dapr/";

/// The methods of the `dapr.proto.runtime.v1.Dapr` service each gRPC rule names (daprd's
/// `pkg/api/grpc/endpoints.go`).
fn grpc_group(name: &str, version: &str) -> Option<&'static [&'static str]> {
    Some(match (name, version) {
        ("invoke", "v1") => &["InvokeService"],
        ("state", "v1") => &[
            "GetState",
            "GetBulkState",
            "SaveState",
            "DeleteState",
            "DeleteBulkState",
            "ExecuteStateTransaction",
        ],
        ("state", "v1alpha1") => &["QueryStateAlpha1"],
        ("publish", "v1") => &["PublishEvent", "BulkPublishEvent"],
        ("publish", "v1alpha1") => &["BulkPublishEventAlpha1"],
        ("bindings", "v1") => &["InvokeBinding"],
        ("secrets", "v1") => &["GetSecret", "GetBulkSecret"],
        ("actors", "v1") => &[
            "RegisterActorTimer",
            "UnregisterActorTimer",
            "RegisterActorReminder",
            "GetActorReminder",
            "UnregisterActorReminder",
            "UnregisterActorRemindersByType",
            "ListActorReminders",
            "GetActorState",
            "ExecuteActorStateTransaction",
            "InvokeActor",
        ],
        ("actors", "v1alpha1") => &["SubscribeActorEventsAlpha1"],
        ("metadata", "v1") => &["GetMetadata", "SetMetadata"],
        ("configuration", "v1alpha1") => &[
            "GetConfigurationAlpha1",
            "SubscribeConfigurationAlpha1",
            "UnsubscribeConfigurationAlpha1",
        ],
        ("configuration", "v1") => &[
            "GetConfiguration",
            "SubscribeConfiguration",
            "UnsubscribeConfiguration",
        ],
        ("lock", "v1alpha1") => &["TryLockAlpha1"],
        ("unlock", "v1alpha1") => &["UnlockAlpha1"],
        ("subtlecrypto", "v1alpha1") => &[
            "SubtleGetKeyAlpha1",
            "SubtleEncryptAlpha1",
            "SubtleDecryptAlpha1",
            "SubtleSignAlpha1",
            "SubtleVerifyAlpha1",
            "SubtleWrapKeyAlpha1",
            "SubtleUnwrapKeyAlpha1",
        ],
        ("crypto", "v1alpha1") => &["EncryptAlpha1", "DecryptAlpha1"],
        ("workflows", "v1alpha1") => &[
            "StartWorkflowAlpha1",
            "GetWorkflowAlpha1",
            "TerminateWorkflowAlpha1",
            "RaiseEventWorkflowAlpha1",
            "PurgeWorkflowAlpha1",
            "PauseWorkflowAlpha1",
            "ResumeWorkflowAlpha1",
        ],
        ("workflows", "v1beta1") => &[
            "StartWorkflowBeta1",
            "GetWorkflowBeta1",
            "TerminateWorkflowBeta1",
            "RaiseEventWorkflowBeta1",
            "PurgeWorkflowBeta1",
            "PauseWorkflowBeta1",
            "ResumeWorkflowBeta1",
        ],
        ("jobs", "v1alpha1") => &[
            "ScheduleJobAlpha1",
            "DeleteJobAlpha1",
            "GetJobAlpha1",
            "DeleteJobsByPrefixAlpha1",
            "ListJobsAlpha1",
        ],
        ("jobs", "v1") => &[
            "ScheduleJob",
            "DeleteJob",
            "GetJob",
            "DeleteJobsByPrefix",
            "ListJobs",
        ],
        ("shutdown", "v1") => &["Shutdown"],
        ("subscribe", "v1alpha1") => &["SubscribeTopicEventsAlpha1"],
        ("conversation", "v1alpha1") => &["ConverseAlpha1"],
        ("conversation", "v1alpha2") => &["ConverseAlpha2"],
        _ => return None,
    })
}

/// The gRPC decisions: full method paths that are blocked.
#[derive(Debug)]
pub(crate) struct GrpcFilter {
    allowed: Option<HashSet<String>>,
    denied: HashSet<String>,
}

impl GrpcFilter {
    /// Whether a call to `path` (`/package.Service/Method`) is refused.
    pub(crate) fn blocks(&self, path: &str) -> bool {
        // Only the Dapr runtime API is filtered, never proxied services.
        if !path.starts_with("/dapr.proto.runtime.") {
            return false;
        }
        self.denied.contains(path) || self.allowed.as_ref().is_some_and(|a| !a.contains(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, version: &str, protocol: &str) -> ApiRule {
        ApiRule {
            name: name.into(),
            version: version.into(),
            protocol: protocol.into(),
        }
    }

    const STATE: Group = Group {
        name: "state",
        version: "v1",
    };
    const QUERY: Group = Group {
        name: "state",
        version: "v1alpha1",
    };
    const HEALTH: Group = Group {
        name: "healthz",
        version: "v1",
    };

    #[test]
    fn http_group_key_and_legacy_path_prefix() {
        let by_group = ApiRules {
            allowed: vec![rule("state", "v1", "http")],
            denied: vec![],
        }
        .http();
        assert!(by_group.allows(STATE, "v1.0/state/{storeName}"));
        assert!(!by_group.allows(QUERY, "v1.0-alpha1/state/{storeName}/query"));
        assert!(by_group.allows(HEALTH, "v1.0/healthz"));
        let by_path = ApiRules {
            allowed: vec![rule("state", "v1.0", "HTTP")],
            denied: vec![],
        }
        .http();
        assert!(by_path.allows(STATE, "v1.0/state/{storeName}/{key}"));
        assert!(!by_path.allows(
            Group {
                name: "publish",
                version: "v1"
            },
            "v1.0/publish/{pubsubname}/*"
        ));
        // Denied wins; gRPC rules do not touch HTTP.
        let both = ApiRules {
            allowed: vec![rule("state", "v1", "http")],
            denied: vec![rule("state", "v1.0", "http"), rule("healthz", "v1", "http")],
        }
        .http();
        assert!(!both.allows(STATE, "v1.0/state/{storeName}"));
        assert!(both.allows(HEALTH, "v1.0/healthz"));
        let grpc_only = ApiRules {
            allowed: vec![rule("state", "v1", "grpc")],
            denied: vec![],
        }
        .http();
        assert!(grpc_only.allows(QUERY, "v1.0-alpha1/state/{storeName}/query"));
    }

    #[test]
    fn grpc_methods_by_group() {
        assert!(
            ApiRules {
                allowed: vec![rule("state", "v1", "http"), rule("nope", "v1", "grpc")],
                denied: vec![],
            }
            .grpc()
            .is_none()
        );
        let f = ApiRules {
            allowed: vec![rule("state", "v1", "grpc"), rule("publish", "v1", "grpc")],
            denied: vec![rule("publish", "v1", "grpc")],
        }
        .grpc()
        .unwrap();
        assert!(!f.blocks("/dapr.proto.runtime.v1.Dapr/GetState"));
        assert!(f.blocks("/dapr.proto.runtime.v1.Dapr/PublishEvent"));
        assert!(f.blocks("/dapr.proto.runtime.v1.Dapr/GetSecret"));
        assert!(f.blocks("/dapr.proto.runtime.v1.Dapr/QueryStateAlpha1"));
        assert!(!f.blocks("/my.App/Method"));
    }
}
