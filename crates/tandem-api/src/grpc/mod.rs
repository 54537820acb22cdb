//! The Dapr gRPC API (`dapr.proto.runtime.v1.Dapr`, default port 50001).
//!
//! One file per building block, like [`crate::http`]: each RPC converts its message, calls the
//! same runtime service as its HTTP twin, and converts the answer. Errors are rendered only in
//! [`error`]. The service types and the server trait come from the `dapr` crate.
//!
//! Served: state (get, bulk get, save, delete, bulk delete, transactions, query), publish and
//! bulk publish, `SubscribeTopicEventsAlpha1` streaming subscriptions, `InvokeService`,
//! secrets, metadata and shutdown. Every other RPC answers `UNIMPLEMENTED`
//! ("`<method>` is not implemented by Tandem yet").
//!
//! Configuration `spec.api` rules are applied first ([`crate::allowlist`]), then
//! `DAPR_API_TOKEN` is checked by an interceptor ([`ApiToken`]) on every call, streaming ones
//! included; without a token the interceptor is not installed at all. `--max-body-size` bounds
//! decoded and encoded messages.

pub mod error;
mod invoke;
pub mod metadata;
mod proxy;
mod pubsub;
mod secrets;
pub mod service;
mod state;
pub mod subscribe;
mod trace;
mod unary;

/// gRPC header names looked up on every call, parsed once.
pub(crate) mod names {
    use http::HeaderName;

    /// `grpc-status`.
    pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
}

use std::future::Future;
use std::sync::Arc;

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_server::{Dapr, DaprServer};
use tandem_runtime::Runtime;
use tokio::net::TcpListener;
use tonic::codegen::BoxStream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};
use tonic::{Request, Response, Status};

use error::{http_status_error, unimplemented};
use service::{GrpcObserver, GrpcService};
use tandem_runtime::trace::Tracer;

/// Settings of the gRPC API server.
#[derive(Clone, Debug)]
pub struct GrpcOptions {
    /// `--max-body-size` in bytes: the largest message decoded or encoded.
    pub max_body_size: usize,
    /// `DAPR_API_TOKEN`, when set.
    pub api_token: Option<String>,
    /// Configuration `spec.api` (only its `protocol: grpc` rules apply here).
    pub api_rules: crate::allowlist::ApiRules,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            max_body_size: 4 << 20,
            api_token: None,
            api_rules: Default::default(),
        }
    }
}

/// The `Dapr` service over a [`Runtime`].
pub struct DaprApi {
    runtime: Arc<Runtime>,
    max_body_size: usize,
}

impl DaprApi {
    /// The service for `runtime`.
    pub fn new(runtime: Arc<Runtime>, max_body_size: usize) -> Self {
        Self {
            runtime,
            max_body_size,
        }
    }
}

/// Enforces `DAPR_API_TOKEN`: the `dapr-api-token` metadata must match; it is removed before
/// the call goes further (so it never reaches an invoked app).
#[derive(Clone)]
pub struct ApiToken {
    token: Arc<[u8]>,
}

impl ApiToken {
    /// A check for `token`.
    pub fn new(token: &str) -> Self {
        Self {
            token: Arc::from(token.as_bytes()),
        }
    }
}

impl Interceptor for ApiToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let detail = match req.metadata().get("dapr-api-token") {
            None => "missing api token in request metadata",
            Some(v) if v.as_bytes() != &*self.token => "authentication error: api token mismatch",
            Some(_) => {
                req.metadata_mut().remove("dapr-api-token");
                return Ok(req);
            }
        };
        Err(http_status_error(401, detail, Default::default()))
    }
}

/// The gRPC API with nothing observed, built once and shared by every listener.
pub fn routes(runtime: Arc<Runtime>, options: &GrpcOptions) -> GrpcService<()> {
    api(runtime, options, None)
}

/// The gRPC API, with `observer` in front, built once and shared by every listener.
///
/// Calls meet, in order: the observer, tracing, the `spec.api` filter (only when gRPC rules are
/// configured), the lean path for the hot unary RPCs ([`unary`]), tonic's generated `Dapr`
/// service for every other Dapr RPC, and gRPC proxying for any other service.
pub fn api<O: GrpcObserver>(
    runtime: Arc<Runtime>,
    options: &GrpcOptions,
    observer: Option<O>,
) -> GrpcService<O> {
    let limit = options.max_body_size;
    let api = Arc::new(DaprApi::new(runtime.clone(), limit));
    let server = DaprServer::from_arc(api.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let api_token = options.api_token.clone().filter(|t| !t.is_empty());
    let token = api_token.as_deref().map(ApiToken::new);
    let tonic_routes = match &token {
        Some(token) => Routes::new(InterceptedService::new(server, token.clone())),
        None => Routes::new(server),
    };
    // Every other service: gRPC proxying to the app named in the metadata.
    let proxy = proxy::Proxy { runtime, api_token };
    let routes = tonic_routes
        .into_axum_router()
        .fallback(move |req: axum::extract::Request| proxy.clone().handle(req));
    let tracer = api.runtime.tracer.clone();
    let tracer = if tracer.enabled() {
        tracer
    } else {
        Tracer::default()
    };
    GrpcService {
        routes,
        shared: Arc::new(service::Shared {
            api,
            tracer,
            filter: options.api_rules.grpc(),
            token,
            observer,
        }),
    }
}

/// Serves the gRPC API (HTTP/2) on `listener` until `shutdown` resolves, then drains.
pub async fn serve<O: GrpcObserver>(
    listener: TcpListener,
    service: GrpcService<O>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http2::serve(listener, service, shutdown).await
}

/// Implements the trait: the served RPCs as written, every other one answering
/// `UNIMPLEMENTED` with its name.
macro_rules! dapr_api {
    (
        served { $($served:tt)* }
        unserved { $($name:ident($req:ty) -> $resp:ty, $label:literal;)* }
    ) => {
        #[tonic::async_trait]
        impl Dapr for DaprApi {
            $($served)*
            $(
                async fn $name(&self, _request: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(unimplemented($label))
                }
            )*
        }
    };
}

dapr_api! {
    served {
        type SubscribeTopicEventsAlpha1Stream = subscribe::EventStream;
        type SubscribeConfigurationAlpha1Stream = BoxStream<rt::SubscribeConfigurationResponse>;
        type SubscribeConfigurationStream = BoxStream<rt::SubscribeConfigurationResponse>;
        type EncryptAlpha1Stream = BoxStream<rt::EncryptResponse>;
        type DecryptAlpha1Stream = BoxStream<rt::DecryptResponse>;

        async fn invoke_service(
            &self,
            request: Request<rt::InvokeServiceRequest>,
        ) -> Result<Response<common::InvokeResponse>, Status> {
            invoke::invoke(&self.runtime, self.max_body_size, request).await
        }

        async fn invoke_binding(
            &self,
            request: Request<rt::InvokeBindingRequest>,
        ) -> Result<Response<rt::InvokeBindingResponse>, Status> {
            let (md, _, req) = request.into_parts();
            let mut metadata = req.metadata;
            for h in ["traceparent", "tracestate", "baggage"] {
                if let Some(v) = md.get(h).and_then(|v| v.to_str().ok()) {
                    metadata.insert(h.to_owned(), v.to_owned());
                }
            }
            let invoke = tandem_components::bindings::InvokeRequest {
                operation: req.operation,
                data: req.data.into(),
                metadata,
            };
            let resp = self
                .runtime
                .bindings
                .invoke(&req.name, invoke)
                .await
                .map_err(error::to_status)?;
            Ok(Response::new(rt::InvokeBindingResponse {
                data: resp.data.map(Vec::from).unwrap_or_default(),
                metadata: resp.metadata,
            }))
        }

        async fn get_state(
            &self,
            request: Request<rt::GetStateRequest>,
        ) -> Result<Response<rt::GetStateResponse>, Status> {
            state::get(&self.runtime, request.into_inner())
                .await
                .map(Response::new)
        }

        async fn get_bulk_state(
            &self,
            request: Request<rt::GetBulkStateRequest>,
        ) -> Result<Response<rt::GetBulkStateResponse>, Status> {
            state::get_bulk(&self.runtime, request).await
        }

        async fn save_state(
            &self,
            request: Request<rt::SaveStateRequest>,
        ) -> Result<Response<()>, Status> {
            state::save(&self.runtime, request).await
        }

        async fn query_state_alpha1(
            &self,
            request: Request<rt::QueryStateRequest>,
        ) -> Result<Response<rt::QueryStateResponse>, Status> {
            state::query(&self.runtime, request).await
        }

        async fn delete_state(
            &self,
            request: Request<rt::DeleteStateRequest>,
        ) -> Result<Response<()>, Status> {
            state::delete(&self.runtime, request).await
        }

        async fn delete_bulk_state(
            &self,
            request: Request<rt::DeleteBulkStateRequest>,
        ) -> Result<Response<()>, Status> {
            state::delete_bulk(&self.runtime, request).await
        }

        async fn execute_state_transaction(
            &self,
            request: Request<rt::ExecuteStateTransactionRequest>,
        ) -> Result<Response<()>, Status> {
            state::transaction(&self.runtime, request).await
        }

        async fn publish_event(
            &self,
            request: Request<rt::PublishEventRequest>,
        ) -> Result<Response<()>, Status> {
            pubsub::publish(&self.runtime, request).await
        }

        async fn bulk_publish_event_alpha1(
            &self,
            request: Request<rt::BulkPublishRequest>,
        ) -> Result<Response<rt::BulkPublishResponse>, Status> {
            pubsub::bulk_publish(&self.runtime, request).await
        }

        async fn bulk_publish_event(
            &self,
            request: Request<rt::BulkPublishRequest>,
        ) -> Result<Response<rt::BulkPublishResponse>, Status> {
            pubsub::bulk_publish(&self.runtime, request).await
        }

        async fn subscribe_topic_events_alpha1(
            &self,
            request: Request<tonic::Streaming<rt::SubscribeTopicEventsRequestAlpha1>>,
        ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
            subscribe::subscribe(&self.runtime, request).await
        }

        async fn get_secret(
            &self,
            request: Request<rt::GetSecretRequest>,
        ) -> Result<Response<rt::GetSecretResponse>, Status> {
            secrets::get(&self.runtime, request).await
        }

        async fn get_bulk_secret(
            &self,
            request: Request<rt::GetBulkSecretRequest>,
        ) -> Result<Response<rt::GetBulkSecretResponse>, Status> {
            secrets::bulk(&self.runtime, request).await
        }

        async fn get_metadata(
            &self,
            _request: Request<rt::GetMetadataRequest>,
        ) -> Result<Response<rt::GetMetadataResponse>, Status> {
            metadata::get(&self.runtime)
        }

        async fn set_metadata(
            &self,
            request: Request<rt::SetMetadataRequest>,
        ) -> Result<Response<()>, Status> {
            metadata::set(&self.runtime, request)
        }

        async fn shutdown(
            &self,
            request: Request<rt::ShutdownRequest>,
        ) -> Result<Response<()>, Status> {
            metadata::shutdown(&self.runtime, request)
        }
    }
    unserved {
        register_actor_timer(rt::RegisterActorTimerRequest) -> (), "RegisterActorTimer";
        unregister_actor_timer(rt::UnregisterActorTimerRequest) -> (), "UnregisterActorTimer";
        register_actor_reminder(rt::RegisterActorReminderRequest) -> (), "RegisterActorReminder";
        unregister_actor_reminder(rt::UnregisterActorReminderRequest) -> (), "UnregisterActorReminder";
        unregister_actor_reminders_by_type(rt::UnregisterActorRemindersByTypeRequest) -> rt::UnregisterActorRemindersByTypeResponse, "UnregisterActorRemindersByType";
        list_actor_reminders(rt::ListActorRemindersRequest) -> rt::ListActorRemindersResponse, "ListActorReminders";
        get_actor_state(rt::GetActorStateRequest) -> rt::GetActorStateResponse, "GetActorState";
        get_actor_reminder(rt::GetActorReminderRequest) -> rt::GetActorReminderResponse, "GetActorReminder";
        execute_actor_state_transaction(rt::ExecuteActorStateTransactionRequest) -> (), "ExecuteActorStateTransaction";
        invoke_actor(rt::InvokeActorRequest) -> rt::InvokeActorResponse, "InvokeActor";
        get_configuration_alpha1(rt::GetConfigurationRequest) -> rt::GetConfigurationResponse, "GetConfigurationAlpha1";
        get_configuration(rt::GetConfigurationRequest) -> rt::GetConfigurationResponse, "GetConfiguration";
        subscribe_configuration_alpha1(rt::SubscribeConfigurationRequest) -> Self::SubscribeConfigurationAlpha1Stream, "SubscribeConfigurationAlpha1";
        subscribe_configuration(rt::SubscribeConfigurationRequest) -> Self::SubscribeConfigurationStream, "SubscribeConfiguration";
        unsubscribe_configuration_alpha1(rt::UnsubscribeConfigurationRequest) -> rt::UnsubscribeConfigurationResponse, "UnsubscribeConfigurationAlpha1";
        unsubscribe_configuration(rt::UnsubscribeConfigurationRequest) -> rt::UnsubscribeConfigurationResponse, "UnsubscribeConfiguration";
        try_lock_alpha1(rt::TryLockRequest) -> rt::TryLockResponse, "TryLockAlpha1";
        unlock_alpha1(rt::UnlockRequest) -> rt::UnlockResponse, "UnlockAlpha1";
        encrypt_alpha1(tonic::Streaming<rt::EncryptRequest>) -> Self::EncryptAlpha1Stream, "EncryptAlpha1";
        decrypt_alpha1(tonic::Streaming<rt::DecryptRequest>) -> Self::DecryptAlpha1Stream, "DecryptAlpha1";
        subtle_get_key_alpha1(rt::SubtleGetKeyRequest) -> rt::SubtleGetKeyResponse, "SubtleGetKeyAlpha1";
        subtle_encrypt_alpha1(rt::SubtleEncryptRequest) -> rt::SubtleEncryptResponse, "SubtleEncryptAlpha1";
        subtle_decrypt_alpha1(rt::SubtleDecryptRequest) -> rt::SubtleDecryptResponse, "SubtleDecryptAlpha1";
        subtle_wrap_key_alpha1(rt::SubtleWrapKeyRequest) -> rt::SubtleWrapKeyResponse, "SubtleWrapKeyAlpha1";
        subtle_unwrap_key_alpha1(rt::SubtleUnwrapKeyRequest) -> rt::SubtleUnwrapKeyResponse, "SubtleUnwrapKeyAlpha1";
        subtle_sign_alpha1(rt::SubtleSignRequest) -> rt::SubtleSignResponse, "SubtleSignAlpha1";
        subtle_verify_alpha1(rt::SubtleVerifyRequest) -> rt::SubtleVerifyResponse, "SubtleVerifyAlpha1";
        start_workflow_alpha1(rt::StartWorkflowRequest) -> rt::StartWorkflowResponse, "StartWorkflowAlpha1";
        get_workflow_alpha1(rt::GetWorkflowRequest) -> rt::GetWorkflowResponse, "GetWorkflowAlpha1";
        purge_workflow_alpha1(rt::PurgeWorkflowRequest) -> (), "PurgeWorkflowAlpha1";
        terminate_workflow_alpha1(rt::TerminateWorkflowRequest) -> (), "TerminateWorkflowAlpha1";
        pause_workflow_alpha1(rt::PauseWorkflowRequest) -> (), "PauseWorkflowAlpha1";
        resume_workflow_alpha1(rt::ResumeWorkflowRequest) -> (), "ResumeWorkflowAlpha1";
        raise_event_workflow_alpha1(rt::RaiseEventWorkflowRequest) -> (), "RaiseEventWorkflowAlpha1";
        start_workflow_beta1(rt::StartWorkflowRequest) -> rt::StartWorkflowResponse, "StartWorkflowBeta1";
        get_workflow_beta1(rt::GetWorkflowRequest) -> rt::GetWorkflowResponse, "GetWorkflowBeta1";
        purge_workflow_beta1(rt::PurgeWorkflowRequest) -> (), "PurgeWorkflowBeta1";
        terminate_workflow_beta1(rt::TerminateWorkflowRequest) -> (), "TerminateWorkflowBeta1";
        pause_workflow_beta1(rt::PauseWorkflowRequest) -> (), "PauseWorkflowBeta1";
        resume_workflow_beta1(rt::ResumeWorkflowRequest) -> (), "ResumeWorkflowBeta1";
        raise_event_workflow_beta1(rt::RaiseEventWorkflowRequest) -> (), "RaiseEventWorkflowBeta1";
        schedule_job_alpha1(rt::ScheduleJobRequest) -> rt::ScheduleJobResponse, "ScheduleJobAlpha1";
        schedule_job(rt::ScheduleJobRequest) -> rt::ScheduleJobResponse, "ScheduleJob";
        get_job_alpha1(rt::GetJobRequest) -> rt::GetJobResponse, "GetJobAlpha1";
        get_job(rt::GetJobRequest) -> rt::GetJobResponse, "GetJob";
        delete_job_alpha1(rt::DeleteJobRequest) -> rt::DeleteJobResponse, "DeleteJobAlpha1";
        delete_job(rt::DeleteJobRequest) -> rt::DeleteJobResponse, "DeleteJob";
        delete_jobs_by_prefix_alpha1(rt::DeleteJobsByPrefixRequestAlpha1) -> rt::DeleteJobsByPrefixResponseAlpha1, "DeleteJobsByPrefixAlpha1";
        delete_jobs_by_prefix(rt::DeleteJobsByPrefixRequest) -> rt::DeleteJobsByPrefixResponse, "DeleteJobsByPrefix";
        list_jobs_alpha1(rt::ListJobsRequestAlpha1) -> rt::ListJobsResponseAlpha1, "ListJobsAlpha1";
        list_jobs(rt::ListJobsRequest) -> rt::ListJobsResponse, "ListJobs";
        converse_alpha1(rt::ConversationRequest) -> rt::ConversationResponse, "ConverseAlpha1";
        converse_alpha2(rt::ConversationRequestAlpha2) -> rt::ConversationResponseAlpha2, "ConverseAlpha2";
        create_index_alpha1(rt::CreateIndexRequestAlpha1) -> (), "CreateIndexAlpha1";
        get_index_alpha1(rt::GetIndexRequestAlpha1) -> rt::GetIndexResponseAlpha1, "GetIndexAlpha1";
        list_indexes_alpha1(rt::ListIndexesRequestAlpha1) -> rt::ListIndexesResponseAlpha1, "ListIndexesAlpha1";
        delete_index_alpha1(rt::DeleteIndexRequestAlpha1) -> (), "DeleteIndexAlpha1";
        index_documents_alpha1(rt::IndexDocumentsRequestAlpha1) -> rt::IndexDocumentsResponseAlpha1, "IndexDocumentsAlpha1";
        get_documents_alpha1(rt::GetDocumentsRequestAlpha1) -> rt::GetDocumentsResponseAlpha1, "GetDocumentsAlpha1";
        delete_documents_alpha1(rt::DeleteDocumentsRequestAlpha1) -> rt::DeleteDocumentsResponseAlpha1, "DeleteDocumentsAlpha1";
        search_alpha1(rt::SearchRequestAlpha1) -> rt::SearchResponseAlpha1, "SearchAlpha1";
        create_collection_alpha1(rt::CreateCollectionRequestAlpha1) -> (), "CreateCollectionAlpha1";
        get_collection_alpha1(rt::GetCollectionRequestAlpha1) -> rt::GetCollectionResponseAlpha1, "GetCollectionAlpha1";
        list_collections_alpha1(rt::ListCollectionsRequestAlpha1) -> rt::ListCollectionsResponseAlpha1, "ListCollectionsAlpha1";
        delete_collection_alpha1(rt::DeleteCollectionRequestAlpha1) -> (), "DeleteCollectionAlpha1";
        upsert_vectors_alpha1(rt::UpsertVectorsRequestAlpha1) -> rt::UpsertVectorsResponseAlpha1, "UpsertVectorsAlpha1";
        delete_vectors_alpha1(rt::DeleteVectorsRequestAlpha1) -> rt::DeleteVectorsResponseAlpha1, "DeleteVectorsAlpha1";
        get_vectors_alpha1(rt::GetVectorsRequestAlpha1) -> rt::GetVectorsResponseAlpha1, "GetVectorsAlpha1";
        query_vectors_alpha1(rt::QueryVectorsRequestAlpha1) -> rt::QueryVectorsResponseAlpha1, "QueryVectorsAlpha1";
        batch_query_vectors_alpha1(rt::BatchQueryVectorsRequestAlpha1) -> rt::BatchQueryVectorsResponseAlpha1, "BatchQueryVectorsAlpha1";
    }
}

#[cfg(test)]
mod tests {
    use dapr::dapr::proto::common::v1::{Etag, StateItem};
    use tandem_components::memory::InMemoryStateStore;
    use tandem_runtime::components::{Components, KeyPrefix};
    use tandem_runtime::metadata::MetadataSnapshot;
    use tonic::Code;

    use super::*;

    /// The service over [`test_runtime`].
    fn api() -> DaprApi {
        DaprApi::new(test_runtime(), 4 << 20)
    }

    /// A runtime with one in-memory state store, `statestore`, and no sockets.
    pub(super) fn test_runtime() -> Arc<Runtime> {
        let mut components = Components::default();
        components.insert_state(
            "statestore",
            "state.in-memory",
            Arc::new(InMemoryStateStore::default()),
            KeyPrefix::Prefix("app".into()),
        );
        Arc::new(Runtime::from_parts(
            "app".into(),
            Arc::new(components),
            Default::default(),
            MetadataSnapshot::default(),
        ))
    }

    fn save(key: &str, value: &[u8], etag: Option<&str>) -> Request<rt::SaveStateRequest> {
        Request::new(rt::SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: key.into(),
                value: value.to_vec(),
                etag: etag.map(|e| Etag { value: e.into() }),
                ..Default::default()
            }],
        })
    }

    fn get(key: &str) -> Request<rt::GetStateRequest> {
        Request::new(rt::GetStateRequest {
            store_name: "statestore".into(),
            key: key.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn state_in_process() {
        let api = api();
        api.save_state(save("k", &[0, 255], None)).await.unwrap();
        let got = api.get_state(get("k")).await.unwrap().into_inner();
        assert_eq!(got.data, [0, 255]);
        let stale = api
            .save_state(save("k", b"x", Some("not-the-etag")))
            .await
            .unwrap_err();
        assert_eq!(stale.code(), Code::Aborted);
        api.save_state(save("k", b"y", Some(&got.etag)))
            .await
            .unwrap();
        let missing = api.get_state(get("none")).await.unwrap().into_inner();
        assert!(missing.data.is_empty() && missing.etag.is_empty());
        let err = api
            .unregister_actor_timer(Request::new(rt::UnregisterActorTimerRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert_eq!(
            err.message(),
            "UnregisterActorTimer is not implemented by Tandem yet"
        );
    }

    #[test]
    fn api_token_interceptor() {
        let mut check = ApiToken::new("t");
        let err = check.call(Request::new(())).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("dapr-api-token", "x".parse().unwrap());
        assert!(check.call(wrong).is_err());
        let mut right = Request::new(());
        right
            .metadata_mut()
            .insert("dapr-api-token", "t".parse().unwrap());
        let passed = check.call(right).unwrap();
        assert!(passed.metadata().get("dapr-api-token").is_none());
    }
}
