//! The one list of compiled-in components: `type` (and aliases) + `version` → constructor.

use tandem_components::memory::InMemoryStateStore;
use tandem_components::memory_pubsub::InMemoryPubSub;
use tandem_runtime::registry::Registry;

/// Every component this build provides.
pub(crate) fn registry() -> Registry {
    let mut r = Registry::new();
    r.state(&["state.in-memory"], "v1", |m| async move {
        InMemoryStateStore::build(&m).await
    });
    r.pubsub(&["pubsub.in-memory"], "v1", |m| async move {
        InMemoryPubSub::build(&m).await
    });
    #[cfg(feature = "kubernetes")]
    r.secret_store(&["secretstores.kubernetes"], "v1", |m| async move {
        tandem_kube::secretstore::KubernetesSecretStore::build(m).await
    });
    #[cfg(feature = "sqlite")]
    r.state(&["state.sqlite", "state.sqlite3"], "v1", |m| async move {
        tandem_sqlite::SqliteStateStore::build(&m).await
    });
    #[cfg(feature = "sqlite")]
    r.pubsub(&["pubsub.sqlite"], "v1", |m| async move {
        tandem_sqlite::SqlitePubSub::build(&m).await
    });
    #[cfg(feature = "redis")]
    r.state(&["state.redis"], "v1", |m| async move {
        tandem_redis::RedisStateStore::build(&m).await
    });
    #[cfg(feature = "redis")]
    r.pubsub(&["pubsub.redis"], "v1", |m| async move {
        tandem_redis::RedisPubSub::build(&m).await
    });
    #[cfg(feature = "redis")]
    r.binding(&["bindings.redis"], "v1", |m| async move {
        tandem_redis::RedisBinding::build(&m)
            .await
            .map(tandem_components::bindings::Binding::output)
    });
    #[cfg(feature = "mysql")]
    r.state(&["state.mysql"], "v1", |m| async move {
        tandem_mysql::MySqlStateStore::build(&m).await
    });
    #[cfg(feature = "mysql")]
    r.binding(&["bindings.mysql"], "v1", |m| async move {
        tandem_mysql::MySqlBinding::build(&m)
            .await
            .map(tandem_components::bindings::Binding::output)
    });
    #[cfg(feature = "postgres")]
    r.state(
        &["state.postgresql", "state.postgres"],
        "v1",
        |m| async move { tandem_postgres::PostgresStateStore::build(&m).await },
    );
    #[cfg(feature = "postgres")]
    r.state(
        &["state.postgresql", "state.postgres"],
        "v2",
        |m| async move { tandem_postgres::PostgresStateStoreV2::build(&m).await },
    );
    #[cfg(feature = "postgres")]
    r.binding(
        &["bindings.postgresql", "bindings.postgres"],
        "v1",
        |m| async move {
            tandem_postgres::PostgresBinding::build(&m)
                .await
                .map(tandem_components::bindings::Binding::output)
        },
    );
    #[cfg(feature = "rabbitmq")]
    r.pubsub(&["pubsub.rabbitmq"], "v1", |m| async move {
        tandem_rabbitmq::RabbitPubSub::build(&m).await
    });
    #[cfg(feature = "rabbitmq")]
    r.binding(&["bindings.rabbitmq"], "v1", |m| async move {
        tandem_rabbitmq::RabbitBinding::build(&m)
            .await
            .map(tandem_components::bindings::Binding::both)
    });
    #[cfg(feature = "bindings")]
    {
        r.binding(&["bindings.cron"], "v1", |m| async move {
            tandem_bindings::CronBinding::build(&m)
                .await
                .map(tandem_components::bindings::Binding::input)
        });
        r.binding(&["bindings.http"], "v1", |m| async move {
            tandem_bindings::HttpBinding::build(&m)
                .await
                .map(tandem_components::bindings::Binding::output)
        });
        r.binding(&["bindings.localstorage"], "v1", |m| async move {
            tandem_bindings::LocalStorageBinding::build(&m)
                .await
                .map(tandem_components::bindings::Binding::output)
        });
    }
    #[cfg(feature = "nats")]
    r.pubsub(&["pubsub.jetstream"], "v1", |m| async move {
        tandem_nats::JetStreamPubSub::build(&m).await
    });
    #[cfg(feature = "mqtt")]
    r.pubsub(&["pubsub.mqtt3", "pubsub.mqtt"], "v1", |m| async move {
        tandem_mqtt::MqttPubSub::build(&m).await
    });
    #[cfg(feature = "mqtt")]
    r.binding(&["bindings.mqtt3", "bindings.mqtt"], "v1", |m| async move {
        tandem_mqtt::MqttBinding::build(&m)
            .await
            .map(tandem_components::bindings::Binding::both)
    });
    #[cfg(feature = "kafka")]
    {
        r.pubsub(&["pubsub.kafka"], "v1", |m| async move {
            tandem_kafka::KafkaPubSub::build(&m).await
        });
        r.binding(&["bindings.kafka"], "v1", |m| async move {
            tandem_kafka::KafkaBinding::build(&m)
                .await
                .map(tandem_components::bindings::Binding::both)
        });
    }
    #[cfg(feature = "local")]
    {
        r.secret_store(&["secretstores.local.file"], "v1", |m| async move {
            tandem_local::LocalFileSecretStore::build(&m).await
        });
        r.secret_store(&["secretstores.local.env"], "v1", |m| async move {
            tandem_local::LocalEnvSecretStore::build(&m).await
        });
    }
    #[cfg(feature = "vault")]
    r.secret_store(&["secretstores.hashicorp.vault"], "v1", |m| async move {
        tandem_vault::VaultSecretStore::build(&m).await
    });
    r
}

/// Builds the name resolver `component` (from `spec.nameResolution`, see
/// `tandem_runtime::invoke::resolution`).
pub(crate) async fn name_resolver(
    component: &str,
    metadata: tandem_components::Metadata,
) -> Result<std::sync::Arc<dyn tandem_components::nameresolution::NameResolver>, String> {
    match component {
        #[cfg(feature = "sqlite")]
        "sqlite" => tandem_sqlite::SqliteNameResolver::build(&metadata)
            .await
            .map(|r| std::sync::Arc::new(r) as _)
            .map_err(|e| format!("nameresolution.sqlite: {e}")),
        #[cfg(feature = "kubernetes")]
        "kubernetes" => tandem_kube::nameresolution::KubernetesNameResolver::build(&metadata)
            .map(|r| std::sync::Arc::new(r) as _)
            .map_err(|e| format!("nameresolution.kubernetes: {e}")),
        other => {
            let _ = metadata;
            Err(format!(
                "name resolution component '{other}' is not available in this build of Tandem"
            ))
        }
    }
}
