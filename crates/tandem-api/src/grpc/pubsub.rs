//! `PublishEvent` and `BulkPublishEvent`: convert, call
//! [`tandem_runtime::pubsub::PubSubService`], convert back.

use dapr::dapr::proto::runtime::v1 as rt;
use tandem_runtime::Runtime;
use tandem_runtime::pubsub::{BulkEntry, TraceContext};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::error::to_status;

/// The W3C trace context the caller sent as request metadata.
pub(super) fn trace(metadata: &MetadataMap) -> TraceContext {
    let get = |k: &str| {
        metadata
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    TraceContext {
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    }
}

/// `PublishEvent`: same metadata keys as HTTP (`rawPayload`, `ttlInSeconds`, `cloudevent.*`).
pub(super) async fn publish(
    rt: &Runtime,
    req: Request<rt::PublishEventRequest>,
) -> Result<Response<()>, Status> {
    let trace = trace(req.metadata());
    let req = req.into_inner();
    let content_type = Some(req.data_content_type.as_str()).filter(|c| !c.is_empty());
    rt.pubsub
        .publish(
            &req.pubsub_name,
            &req.topic,
            req.data.into(),
            content_type,
            req.metadata,
            &trace,
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `BulkPublishEvent` (and the deprecated Alpha1): as in daprd, entries the component refused
/// come back in `failed_entries` of a successful answer; request errors are errors.
pub(super) async fn bulk_publish(
    rt: &Runtime,
    req: Request<rt::BulkPublishRequest>,
) -> Result<Response<rt::BulkPublishResponse>, Status> {
    let trace = trace(req.metadata());
    let req = req.into_inner();
    let entries = req
        .entries
        .into_iter()
        .map(|e| BulkEntry {
            entry_id: e.entry_id,
            event: e.event.into(),
            content_type: e.content_type,
            metadata: e.metadata,
        })
        .collect();
    match rt
        .pubsub
        .bulk_publish(&req.pubsub_name, &req.topic, entries, req.metadata, &trace)
        .await
    {
        Ok(()) => Ok(Response::new(rt::BulkPublishResponse::default())),
        Err((err, failed)) if failed.is_empty() => Err(to_status(err)),
        Err((_, failed)) => Ok(Response::new(rt::BulkPublishResponse {
            failed_entries: failed
                .into_iter()
                .map(|f| rt::BulkPublishResponseFailedEntry {
                    entry_id: f.entry_id,
                    error: f.error,
                })
                .collect(),
        })),
    }
}
