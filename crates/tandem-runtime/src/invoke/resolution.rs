//! Which name-resolution component to build, with which settings, from the Configuration's
//! `spec.nameResolution` and the environment.
//!
//! - No `nameResolution` (or no `component`): `sqlite`, Tandem's local-mode default.
//! - `component: mdns` (daprd's self-hosted default, common in existing Configurations): not
//!   available in Tandem; `sqlite` is used instead, with a warning, and mdns settings ignored.
//! - `component: sqlite`: `configuration` holds its settings (`connectionString`,
//!   `updateInterval`, …).
//!
//! Without a `connectionString`, the database is `TANDEM_NAME_RESOLUTION_DB` when set (tests
//! point each group of sidecars at their own file this way), else
//! `~/.tandem/nameresolution.db` (the folder is created).

use std::collections::HashMap;
use std::path::PathBuf;

use tandem_components::Metadata;
use tandem_config::NameResolutionSpec;

/// The environment variable naming the name-resolution database when the Configuration does
/// not.
pub const DB_ENV: &str = "TANDEM_NAME_RESOLUTION_DB";

/// The resolver to build: its component name (`sqlite`, …) and its settings.
#[derive(Debug)]
pub struct ResolverChoice {
    /// The component, lower-case.
    pub component: String,
    /// Its settings, from `spec.nameResolution.configuration` (plus defaults).
    pub metadata: Metadata,
}

/// Decides the resolver for `app_id` from `spec` and the process environment `env`.
pub fn choose_resolver(
    spec: Option<&NameResolutionSpec>,
    app_id: &str,
    env: &HashMap<String, String>,
) -> Result<ResolverChoice, String> {
    let mut component = spec
        .map(|s| s.component.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "sqlite".to_owned());
    let mut metadata = Metadata::new("nameresolution", app_id);
    if component == "mdns" {
        tracing::warn!(
            "spec.nameResolution.component mdns is not available in Tandem; using sqlite (a shared local database) instead"
        );
        component = "sqlite".to_owned();
    } else if let Some(serde_json::Value::Object(map)) = spec.map(|s| &s.configuration) {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            metadata.insert(k.clone(), text);
        }
    }
    if component == "sqlite" && metadata.get("connectionString").is_none() {
        let path = match env.get(DB_ENV).filter(|p| !p.trim().is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                let home = env
                    .get("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| format!("cannot place the name-resolution database: HOME is not set (set {DB_ENV} or spec.nameResolution.configuration.connectionString)"))?;
                let dir = PathBuf::from(home).join(".tandem");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir.join("nameresolution.db")
            }
        };
        metadata.insert("connectionString", path.display().to_string());
    }
    Ok(ResolverChoice {
        component,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(component: &str, configuration: serde_json::Value) -> NameResolutionSpec {
        NameResolutionSpec {
            component: component.into(),
            version: String::new(),
            configuration,
        }
    }

    #[test]
    fn defaults_env_and_configuration() {
        let home = tempfile_dir();
        let mut env = HashMap::from([("HOME".to_owned(), home.display().to_string())]);
        let c = choose_resolver(None, "a", &env).unwrap();
        assert_eq!(c.component, "sqlite");
        assert_eq!(
            c.metadata.get("connectionString").unwrap(),
            home.join(".tandem/nameresolution.db").display().to_string()
        );
        assert!(home.join(".tandem").is_dir());

        env.insert(DB_ENV.into(), "/tmp/x.db".into());
        let c =
            choose_resolver(Some(&spec("mdns", serde_json::json!({"x": 1}))), "a", &env).unwrap();
        assert_eq!(c.component, "sqlite");
        assert_eq!(c.metadata.get("connectionString"), Some("/tmp/x.db"));
        assert_eq!(c.metadata.get("x"), None);

        let s = spec(
            "SQLite",
            serde_json::json!({"connectionString": "/data/nr.db", "updateInterval": "2s", "n": 3}),
        );
        let c = choose_resolver(Some(&s), "a", &env).unwrap();
        assert_eq!(c.component, "sqlite");
        assert_eq!(c.metadata.get("connectionString"), Some("/data/nr.db"));
        assert_eq!(c.metadata.get("updateInterval"), Some("2s"));
        assert_eq!(c.metadata.get("n"), Some("3"));

        let c = choose_resolver(Some(&spec("consul", serde_json::json!({}))), "a", &env).unwrap();
        assert_eq!(c.component, "consul");
        assert!(choose_resolver(None, "a", &HashMap::new()).is_err());
        let _ = std::fs::remove_dir_all(&home);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-nr-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
