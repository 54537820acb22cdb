//! `state.mysql` against the state store conformance suite, on the real server (MariaDB at
//! 127.0.0.1:3306; the cases skip when it is not there, and fail under
//! `TANDEM_REQUIRE_SERVICES=1`).

use std::sync::Arc;

use tandem_components::Metadata;
use tandem_components::state::StateStore;
use tandem_mysql::MySqlStateStore;

const SERVER: &str = "127.0.0.1:3306";

/// A store on the conformance schema; keys are unique per case, so cases share its tables.
async fn build_with(
    connection_string: &str,
    extra: &[(&str, &str)],
) -> Option<Arc<dyn StateStore>> {
    if !tandem_testkit::services::require("MariaDB", SERVER) {
        return None;
    }
    let mut meta = Metadata::new("mysql", "conformance")
        .with("connectionString", connection_string)
        .with("schemaName", "tandem_conformance");
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    let store = MySqlStateStore::build(&meta).await.expect("build");
    Some(Arc::new(store))
}

async fn build() -> Option<Arc<dyn StateStore>> {
    build_with(
        "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true&parseTime=true",
        &[],
    )
    .await
}

tandem_components::state_store_conformance!(build());

/// The same suite through a `mysql://` URL, on tables with other names and no cleanup task.
mod url_and_custom_tables {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        build_with(
            "mysql://root@127.0.0.1:3306/",
            &[
                ("tableName", "conformance_state"),
                ("metadataTableName", "conformance_meta"),
                ("cleanupInterval", "0"),
                ("timeoutInSeconds", "10"),
            ],
        )
        .await
    }

    tandem_components::state_store_conformance!(build());
}
