//! Component YAML for the sidecars the benchmark starts.

/// A component of `kind` named `name` with `metadata` (name, value) pairs.
pub fn component(name: &str, kind: &str, version: &str, metadata: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: {version}\n"
    );
    y.push_str(if metadata.is_empty() {
        "  metadata: []\n"
    } else {
        "  metadata:\n"
    });
    for (k, v) in metadata {
        y.push_str(&format!(
            "  - name: {k}\n    value: {}\n",
            serde_json::Value::String((*v).to_owned())
        ));
    }
    y
}

/// `state.in-memory`.
pub fn memory_state(name: &str) -> String {
    component(name, "state.in-memory", "v1", &[])
}

/// `state.redis` at `host` (`127.0.0.1:6379`).
pub fn redis_state(name: &str, host: &str) -> String {
    component(name, "state.redis", "v1", &[("redisHost", host)])
}

/// `state.postgresql` v1 on `table`.
pub fn postgres_state(name: &str, conn: &str, table: &str) -> String {
    component(
        name,
        "state.postgresql",
        "v1",
        &[("connectionString", conn), ("tableName", table)],
    )
}

/// `pubsub.in-memory`.
pub fn memory_pubsub(name: &str) -> String {
    component(name, "pubsub.in-memory", "v1", &[])
}

/// How many entries the benchmark's Redis streams keep (about): the component's
/// `maxLenApprox` and the direct path's `XADD … MAXLEN ~`.
pub const STREAM_MAX_LEN: u64 = 10_000;

/// `pubsub.redis` at `host`, streams trimmed to about `max_len` entries.
pub fn redis_pubsub(name: &str, host: &str, concurrency: usize, max_len: u64) -> String {
    component(
        name,
        "pubsub.redis",
        "v1",
        &[
            ("redisHost", host),
            ("maxLenApprox", &max_len.to_string()),
            ("concurrency", &concurrency.to_string()),
        ],
    )
}

/// `secretstores.local.file` reading `path`.
pub fn local_secrets(name: &str, path: &str) -> String {
    component(
        name,
        "secretstores.local.file",
        "v1",
        &[("secretsFile", path)],
    )
}

/// `state.sqlite` in the file `path`.
pub fn sqlite_state(name: &str, path: &str) -> String {
    component(name, "state.sqlite", "v1", &[("connectionString", path)])
}

/// `pubsub.sqlite` in the file `path`.
pub fn sqlite_pubsub(name: &str, path: &str) -> String {
    component(name, "pubsub.sqlite", "v1", &[("connectionString", path)])
}
