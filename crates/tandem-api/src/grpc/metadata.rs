//! `GetMetadata`, `SetMetadata` and `Shutdown`.

use std::time::Duration;

use dapr::dapr::proto::runtime::v1 as rt;
use tandem_runtime::Runtime;
use tandem_runtime::metadata::MetadataSnapshot;
use tonic::{Request, Response, Status};

/// The snapshot in the proto's shape (the same facts as `GET /v1.0/metadata`).
pub fn metadata_response(s: MetadataSnapshot) -> rt::GetMetadataResponse {
    let app = s.app_connection;
    #[allow(deprecated)] // `active_actors_count` is deprecated but still part of the message.
    rt::GetMetadataResponse {
        id: s.id,
        active_actors_count: Vec::new(),
        registered_components: s
            .components
            .into_iter()
            .map(|c| rt::RegisteredComponents {
                name: c.name,
                r#type: c.type_name,
                version: c.version,
                capabilities: c.capabilities.iter().map(|&c| c.to_owned()).collect(),
            })
            .collect(),
        extended_metadata: s.extended.into_iter().collect(),
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|sub| rt::PubsubSubscription {
                pubsub_name: sub.pubsub_name,
                topic: sub.topic,
                metadata: sub.metadata.into_iter().collect(),
                rules: Some(rt::PubsubSubscriptionRules {
                    rules: sub
                        .rules
                        .into_iter()
                        .map(|(r#match, path)| rt::PubsubSubscriptionRule { r#match, path })
                        .collect(),
                }),
                dead_letter_topic: sub.dead_letter_topic,
                r#type: match sub.kind {
                    "DECLARATIVE" => rt::PubsubSubscriptionType::Declarative,
                    "PROGRAMMATIC" => rt::PubsubSubscriptionType::Programmatic,
                    "STREAMING" => rt::PubsubSubscriptionType::Streaming,
                    _ => rt::PubsubSubscriptionType::Unknown,
                } as i32,
            })
            .collect(),
        http_endpoints: s
            .http_endpoints
            .into_iter()
            .map(|name| rt::MetadataHttpEndpoint { name })
            .collect(),
        app_connection_properties: Some(rt::AppConnectionProperties {
            port: app.port.map_or(0, i32::from),
            protocol: app.protocol,
            channel_address: app.channel_address,
            max_concurrency: app
                .max_concurrency
                .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            health: app.health.map(|h| rt::AppConnectionHealthProperties {
                health_check_path: h.path.unwrap_or_default(),
                health_probe_interval: h.interval,
                health_probe_timeout: h.timeout,
                health_threshold: i32::try_from(h.threshold).unwrap_or(i32::MAX),
            }),
        }),
        runtime_version: s.runtime_version,
        enabled_features: s.enabled_features,
        actor_runtime: Some(rt::ActorRuntime {
            runtime_status: rt::actor_runtime::ActorRuntimeStatus::Disabled as i32,
            active_actors: Vec::new(),
            host_ready: false,
            placement: String::new(),
        }),
        scheduler: None,
        workflows: None,
    }
}

/// `GetMetadata`.
pub(super) fn get(rt: &Runtime) -> Result<Response<rt::GetMetadataResponse>, Status> {
    Ok(Response::new(metadata_response(rt.metadata.snapshot())))
}

/// `SetMetadata`: sets an `extended` attribute.
pub(super) fn set(
    rt: &Runtime,
    req: Request<rt::SetMetadataRequest>,
) -> Result<Response<()>, Status> {
    let req = req.into_inner();
    rt.metadata.set_extended(&req.key, req.value);
    Ok(Response::new(()))
}

/// `Shutdown`: answers at once, then stops gracefully (or exits with status 1 shortly after
/// with `dapr-force-shutdown: true` metadata).
pub(super) fn shutdown(
    rt: &Runtime,
    req: Request<rt::ShutdownRequest>,
) -> Result<Response<()>, Status> {
    let forced = req
        .metadata()
        .get("dapr-force-shutdown")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if forced {
        rt.shutdown.force(Duration::from_millis(100));
    } else {
        rt.shutdown.trigger();
    }
    Ok(Response::new(()))
}
