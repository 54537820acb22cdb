//! The one list of compiled-in components: `type` (and aliases) + `version` → constructor.

use tandem_components::memory::InMemoryStateStore;
use tandem_runtime::registry::Registry;

/// Every component this build provides.
pub(crate) fn registry() -> Registry {
    let mut r = Registry::new();
    r.state(&["state.in-memory"], "v1", |m| async move {
        InMemoryStateStore::build(&m).await
    });
    #[cfg(feature = "sqlite")]
    r.state(&["state.sqlite", "state.sqlite3"], "v1", |m| async move {
        tandem_sqlite::SqliteStateStore::build(&m).await
    });
    #[cfg(feature = "local")]
    {
        r.secret_store(&["secretstores.local.file"], "v1", |m| async move {
            tandem_local::LocalFileSecretStore::build(&m).await
        });
        r.secret_store(&["secretstores.local.env"], "v1", |m| async move {
            tandem_local::LocalEnvSecretStore::build(&m).await
        });
    }
    r
}
