//! Access control for service invocation (the Configuration's `spec.accessControl`), enforced
//! by the callee's sidecar on calls arriving over the internal channel.
//!
//! The decision follows daprd's `pkg/acl`: the global `defaultAction` applies unless a policy
//! exists for the caller's app-id and namespace with the caller's trust domain; then the
//! policy's `defaultAction` (when set) replaces it, and an operation matching the method (daprd's
//! trie: `*` one segment or a glob inside a segment, `**` everything below, a plain operation
//! also covering what lies below it; case-insensitive for HTTP) decides per verb (`httpVerb`
//! entries, `*` for any).
//!
//! With mTLS on ([`crate::security`]) the caller's identity comes from its verified
//! certificate, as in daprd. Without mTLS it is the one the calling sidecar states
//! (`dapr-caller-app-id`, `dapr-caller-namespace`, and its trust domain): that guards against
//! mistakes, not against a hostile process on the network.
//!
//! Leniencies: a policy without `namespace` is for `default`, one without `trustDomain` for
//! `public` (daprd rejects such a Configuration); an operation without `action` falls back to
//! the policy's default. The Configuration loader maps an empty global `defaultAction` to
//! `allow`, where daprd uses `deny` when policies are present.
//!
//! Each decision is counted as daprd counts it ([`Decision::by`]): by the caller's policy when
//! that policy sets its own `defaultAction`, otherwise by the global action. Without an
//! `accessControl` section that says anything (a `defaultAction`, a `trustDomain` or a policy)
//! there is no list, as in daprd: calls are neither checked nor counted. A section with only
//! `defaultAction: allow` counts every call as allowed by the global action.

use std::collections::HashMap;

use tandem_config::{AccessAction, AccessControlSpec};

/// Who is calling, as stated by the calling sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller<'a> {
    /// `dapr-caller-app-id`.
    pub app_id: &'a str,
    /// `dapr-caller-namespace` (`default` when absent).
    pub namespace: &'a str,
    /// The caller's trust domain (`public` when absent).
    pub trust_domain: &'a str,
}

impl Caller<'_> {
    /// daprd's SPIFFE form of the identity, used in denial messages.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

/// Which part of the list decided a call (daprd's `actionPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The caller's policy, which sets its own `defaultAction`.
    App,
    /// The global `defaultAction`: no policy for the caller, or one without its own default.
    Global,
}

/// The outcome of [`AccessControl::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call may go on.
    pub allowed: bool,
    /// What decided it.
    pub by: DecidedBy,
}

/// The compiled access-control list.
#[derive(Debug)]
pub struct AccessControl {
    default_allow: bool,
    policies: HashMap<(String, String), Policy>,
    /// The Configuration's section said something (see [`AccessControlSpec::specified`]).
    specified: bool,
}

#[derive(Debug)]
struct Policy {
    default_action: Option<AccessAction>,
    trust_domain: String,
    operations: Trie,
}

#[derive(Debug)]
struct OperationAction {
    /// Verb (as written, `*` included) → action.
    verbs: HashMap<String, Option<AccessAction>>,
}

impl Default for AccessControl {
    fn default() -> Self {
        Self {
            default_allow: true,
            policies: HashMap::new(),
            specified: false,
        }
    }
}

impl AccessControl {
    /// Compiles `spec`.
    pub fn new(spec: &AccessControlSpec) -> Self {
        let mut policies = HashMap::new();
        for p in &spec.policies {
            if p.app_id.is_empty() {
                tracing::warn!("accessControl: a policy without appId is ignored");
                continue;
            }
            let mut operations = Trie::default();
            for op in &p.operations {
                let mut name = op.name.to_ascii_lowercase();
                if !name.starts_with('/') {
                    name.insert(0, '/');
                }
                let verbs = op
                    .http_verb
                    .iter()
                    .map(|v| (v.clone(), op.action.or(p.default_action)))
                    .collect();
                operations.put(&name, OperationAction { verbs });
            }
            let namespace = p
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            policies.insert(
                (p.app_id.clone(), namespace),
                Policy {
                    default_action: p.default_action,
                    trust_domain: p
                        .trust_domain
                        .clone()
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "public".to_owned()),
                    operations,
                },
            );
        }
        Self {
            default_allow: spec.default_action == AccessAction::Allow,
            policies,
            specified: spec.specified,
        }
    }

    /// Whether there is no list to consult: no `accessControl` section, or one that says
    /// nothing. Every call is then allowed, and none is counted.
    pub fn allows_all(&self) -> bool {
        !self.specified && self.default_allow && self.policies.is_empty()
    }

    /// Whether `caller` may call `operation` (the normalised method, with or without a leading
    /// `/`) with `verb` (upper-case HTTP method, empty for none), and what decided it.
    pub fn decide(&self, caller: Option<Caller<'_>>, operation: &str, verb: &str) -> Decision {
        let by_global = Decision {
            allowed: self.default_allow,
            by: DecidedBy::Global,
        };
        if self.allows_all() {
            return by_global;
        }
        let global = if self.default_allow {
            AccessAction::Allow
        } else {
            AccessAction::Deny
        };
        let Some(caller) = caller.filter(|c| !c.app_id.is_empty()) else {
            return by_global;
        };
        let key = (caller.app_id.to_owned(), caller.namespace.to_owned());
        let Some(policy) = self.policies.get(&key) else {
            return by_global;
        };
        if policy.trust_domain != caller.trust_domain {
            return by_global;
        }
        let by = if policy.default_action.is_some() {
            DecidedBy::App
        } else {
            DecidedBy::Global
        };
        let mut action = Some(policy.default_action.unwrap_or(global));
        let mut op = operation.to_ascii_lowercase();
        if !op.starts_with('/') {
            op.insert(0, '/');
        }
        if let Some(found) = policy.operations.search(&op) {
            if verb.is_empty() {
                action = policy.default_action;
            } else if let Some(a) = found.verbs.get(verb).or_else(|| found.verbs.get("*")) {
                action = *a;
            }
        }
        Decision {
            allowed: action == Some(AccessAction::Allow),
            by,
        }
    }
}

/// daprd's operation trie (`pkg/config/acl_trie.go`), node for node, so that the same
/// patterns match the same methods.
#[derive(Debug, Default)]
struct Trie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// One segment with its leading `/` (`/orders`, `/*`, `/**`, `/op*`).
    segment: String,
    data: Option<OperationAction>,
    children: Vec<Node>,
}

const SINGLE: &str = "/*";
const MULTI: &str = "/**";

impl Trie {
    fn put(&mut self, operation: &str, data: OperationAction) {
        let parts: Vec<&str> = operation.split('/').collect();
        let last = parts.len() - 1;
        let mut node = &mut self.root;
        let mut data = Some(data);
        for (index, part) in parts.iter().enumerate().skip(1) {
            let segment = format!("/{part}");
            let pos = node.children.iter().position(|c| c.segment == segment);
            match pos {
                None => {
                    node.children.push(Node {
                        segment,
                        data: if index == last { data.take() } else { None },
                        children: Vec::new(),
                    });
                    let at = node.children.len() - 1;
                    node = &mut node.children[at];
                }
                Some(at) if index == last => {
                    let existing = &mut node.children[at];
                    if existing.data.is_none() {
                        existing.data = data.take();
                    }
                }
                Some(at) => node = &mut node.children[at],
            }
        }
    }

    fn search(&self, operation: &str) -> Option<&OperationAction> {
        let parts: Vec<&str> = operation.split('/').collect();
        let last = parts.len() - 1;
        let mut node = &self.root;
        for (index, part) in parts.iter().enumerate().skip(1) {
            let is_end = index == last;
            let segment = format!("/{part}");
            node = node.find_child(&segment, is_end)?;
            if let Some(data) = &node.data {
                if !is_end && node.segment.ends_with(SINGLE) && !node.segment.ends_with(MULTI) {
                    continue;
                }
                return Some(data);
            } else if is_end {
                return node
                    .find_child(SINGLE, is_end)
                    .and_then(|n| n.data.as_ref());
            }
        }
        None
    }
}

impl Node {
    fn find_child(&self, target: &str, is_end: bool) -> Option<&Node> {
        for child in &self.children {
            if child.segment == target {
                return Some(child);
            }
            if child.segment == SINGLE {
                if is_end {
                    return Some(child);
                }
                continue;
            }
            if child.segment == MULTI {
                return Some(child);
            }
            if glob(target.as_bytes(), child.segment.as_bytes()) {
                return Some(child);
            }
        }
        None
    }
}

/// `*` matches any run of characters (including none); everything else literally.
fn glob(target: &[u8], pattern: &[u8]) -> bool {
    let (mut t, mut p) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < target.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && pattern[p] == target[t] {
            p += 1;
            t += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use tandem_config::{AppOperation, AppPolicy};

    use super::*;

    fn op(name: &str, verbs: &[&str], action: AccessAction) -> AppOperation {
        AppOperation {
            name: name.into(),
            http_verb: verbs.iter().map(|v| (*v).to_owned()).collect(),
            action: Some(action),
        }
    }

    fn caller(app_id: &str) -> Caller<'_> {
        Caller {
            app_id,
            namespace: "default",
            trust_domain: "public",
        }
    }

    fn acl(default: AccessAction, policies: Vec<AppPolicy>) -> AccessControl {
        AccessControl::new(&AccessControlSpec {
            default_action: default,
            trust_domain: "public".into(),
            policies,
            specified: true,
        })
    }

    fn policy(app_id: &str, default: Option<AccessAction>, ops: Vec<AppOperation>) -> AppPolicy {
        AppPolicy {
            app_id: app_id.into(),
            default_action: default,
            trust_domain: Some("public".into()),
            namespace: Some("default".into()),
            operations: ops,
        }
    }

    use AccessAction::{Allow, Deny};

    impl AccessControl {
        fn allows(&self, caller: Option<Caller<'_>>, operation: &str, verb: &str) -> bool {
            self.decide(caller, operation, verb).allowed
        }
    }

    #[test]
    fn no_policies_allow_everything() {
        let a = AccessControl::default();
        assert!(a.allows_all());
        assert!(a.allows(None, "x", "GET"));
        // A section that says only "allow" is a list: consulted (and counted), allowing all.
        let allow = acl(Allow, vec![]);
        assert!(!allow.allows_all());
        assert_eq!(
            allow.decide(Some(caller("a")), "x", "GET"),
            Decision {
                allowed: true,
                by: DecidedBy::Global
            }
        );
        let deny_all = acl(Deny, vec![]);
        assert!(!deny_all.allows(Some(caller("a")), "x", "GET"));
    }

    #[test]
    fn unknown_callers_get_the_global_default() {
        let a = acl(Deny, vec![policy("app1", Some(Allow), vec![])]);
        assert!(a.allows(Some(caller("app1")), "anything", "POST"));
        assert!(!a.allows(Some(caller("app2")), "anything", "POST"));
        assert!(!a.allows(None, "anything", "POST"));
        // Another namespace or trust domain is another identity.
        let other_ns = Caller {
            namespace: "prod",
            ..caller("app1")
        };
        assert!(!a.allows(Some(other_ns), "anything", "POST"));
        let other_td = Caller {
            trust_domain: "corp",
            ..caller("app1")
        };
        assert!(!a.allows(Some(other_td), "anything", "POST"));
    }

    #[test]
    fn a_decision_names_the_policy_that_made_it() {
        let a = acl(
            Allow,
            vec![
                policy("own", Some(Deny), vec![op("/open", &["GET"], Allow)]),
                policy("inherits", None, vec![op("/shut", &["GET"], Deny)]),
            ],
        );
        let decide = |app, method| a.decide(Some(caller(app)), method, "GET");
        let app = |allowed| Decision {
            allowed,
            by: DecidedBy::App,
        };
        let global = |allowed| Decision {
            allowed,
            by: DecidedBy::Global,
        };
        // A policy with its own default decides, by its operations or by that default.
        assert_eq!(decide("own", "open"), app(true));
        assert_eq!(decide("own", "other"), app(false));
        // A policy without one leaves the decision to the global action, even when one of its
        // operations changes the outcome (as daprd counts it).
        assert_eq!(decide("inherits", "other"), global(true));
        assert_eq!(decide("inherits", "shut"), global(false));
        // No policy for the caller, or no caller: the global action.
        assert_eq!(decide("stranger", "open"), global(true));
        assert_eq!(a.decide(None, "open", "GET"), global(true));
        let deny = acl(Deny, vec![policy("own", Some(Allow), vec![])]);
        assert_eq!(
            deny.decide(Some(caller("stranger")), "x", "GET"),
            global(false)
        );
        assert_eq!(
            deny.decide(Some(caller("own")), "x", "GET"),
            Decision {
                allowed: true,
                by: DecidedBy::App
            }
        );
    }

    #[test]
    fn operations_match_per_verb_with_wildcards() {
        let a = acl(
            Deny,
            vec![policy(
                "app1",
                Some(Deny),
                vec![
                    op("/op1", &["POST", "GET"], Allow),
                    op("/op2/*", &["*"], Allow),
                    op("/op3/**", &["PUT"], Allow),
                    op("op4/a*c", &["GET"], Allow),
                    op("/op5/x", &["GET"], Deny),
                ],
            )],
        );
        let c = Some(caller("app1"));
        assert!(a.allows(c, "op1", "POST"));
        assert!(a.allows(c, "/OP1", "GET"), "case-insensitive for HTTP");
        assert!(
            !a.allows(c, "op1", "DELETE"),
            "verb not listed: policy default"
        );
        assert!(
            a.allows(c, "op1/below", "GET"),
            "a plain operation covers what is below"
        );
        assert!(a.allows(c, "op2/x", "DELETE"));
        assert!(
            a.allows(c, "op2", "GET"),
            "`/*` also matches the bare prefix"
        );
        assert!(!a.allows(c, "op2/x/y", "GET"), "`*` is one segment");
        assert!(a.allows(c, "op3/x/y/z", "PUT"));
        assert!(!a.allows(c, "op3/x", "GET"));
        assert!(a.allows(c, "op4/abbc", "GET"));
        assert!(!a.allows(c, "op4/abd", "GET"));
        assert!(!a.allows(c, "op5/x", "GET"));
        assert!(!a.allows(c, "other", "GET"));
    }

    #[test]
    fn a_policy_without_its_own_default_inherits_the_global_one() {
        let a = acl(
            Allow,
            vec![policy("app1", None, vec![op("/admin/**", &["*"], Deny)])],
        );
        let c = Some(caller("app1"));
        assert!(a.allows(c, "orders", "GET"));
        assert!(!a.allows(c, "admin/users", "GET"));
        assert!(a.allows(Some(caller("app2")), "admin/users", "GET"));
    }

    #[test]
    fn globs() {
        assert!(glob(b"/abc", b"/a*"));
        assert!(glob(b"/a", b"/a*"));
        assert!(glob(b"/xaybz", b"/x*y*z"));
        assert!(!glob(b"/b", b"/a*"));
        assert!(!glob(b"/abd", b"/a*c"));
    }

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            caller("app1").spiffe_id(),
            "spiffe://public/ns/default/app1"
        );
    }
}
