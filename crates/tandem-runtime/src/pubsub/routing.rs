//! Routing rules: CEL `match` expressions evaluated against `{"event": <CloudEvent>}`.

use serde_json::Value;

/// One routing rule of a subscription.
pub struct Rule {
    /// The `match` expression as written (empty = matches everything).
    pub source: String,
    program: Option<cel::Program>,
    /// The app path to deliver to.
    pub path: String,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("match", &self.source)
            .field("path", &self.path)
            .finish()
    }
}

impl Rule {
    /// Compiles a rule; an invalid expression is an error naming it.
    pub fn new(expr: &str, path: &str) -> Result<Self, String> {
        let program = if expr.trim().is_empty() {
            None
        } else {
            Some(
                cel::Program::compile(expr)
                    .map_err(|e| format!("invalid match expression '{expr}': {e}"))?,
            )
        };
        Ok(Self {
            source: expr.to_owned(),
            program,
            path: path.to_owned(),
        })
    }

    /// Whether the event matches. Errors and non-boolean results do not match.
    pub fn matches(&self, event: &Value) -> bool {
        let Some(program) = &self.program else {
            return true;
        };
        let mut ctx = cel::Context::default();
        if ctx.add_variable("event", event).is_err() {
            return false;
        }
        matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)))
    }
}

/// The first rule matching `event`, if any.
pub fn route<'a>(rules: &'a [Rule], event: &Value) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            Rule::new(r#"event.type == "widget""#, "/widgets").unwrap(),
            Rule::new("event.data.qty > 10", "/big").unwrap(),
            Rule::new("", "/default").unwrap(),
        ];
        let widget = json!({"type": "widget", "data": {"qty": 50}});
        assert_eq!(route(&rules, &widget).unwrap().path, "/widgets");
        let big = json!({"type": "gadget", "data": {"qty": 50}});
        assert_eq!(route(&rules, &big).unwrap().path, "/big");
        let other = json!({"type": "gadget", "data": {"qty": 1}});
        assert_eq!(route(&rules, &other).unwrap().path, "/default");
        assert!(Rule::new("event.type ==", "/x").is_err());
        let only = vec![Rule::new(r#"event.type == "x""#, "/x").unwrap()];
        assert!(route(&only, &other).is_none());
    }
}
