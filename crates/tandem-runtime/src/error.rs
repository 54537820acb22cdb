//! The one error table of the runtime.
//!
//! Every API failure is an [`ApiError`] whose [`ErrorCode`] row gives the `ERR_*` string, the
//! HTTP status and the gRPC code (values from Dapr's contract). Front ends render an
//! `ApiError` in exactly one function per protocol; nothing else chooses a status code.

use std::collections::BTreeMap;
use std::fmt;

/// gRPC status codes (numeric values of `google.rpc.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Whether an error renders Dapr's legacy two-field body or the rich body with `details`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `{"errorCode", "message"}`.
    Legacy,
    /// `{"errorCode", "message", "details": [...]}`.
    Rich,
}

macro_rules! error_table {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, $http:literal, $grpc:ident, $shape:ident, $reason:expr; )*) => {
        /// One condition of Dapr's error table. Several rows may share a code string.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode { $( $(#[$doc])* $variant, )* }

        impl ErrorCode {
            /// The `ERR_*` string.
            pub fn code(self) -> &'static str { match self { $( Self::$variant => $code, )* } }
            /// The HTTP status.
            pub fn http_status(self) -> u16 { match self { $( Self::$variant => $http, )* } }
            /// The gRPC code.
            pub fn grpc_code(self) -> GrpcCode { match self { $( Self::$variant => GrpcCode::$grpc, )* } }
            /// Legacy or rich body.
            pub fn shape(self) -> Shape { match self { $( Self::$variant => Shape::$shape, )* } }
            /// The `google.rpc.ErrorInfo` reason of rich errors.
            pub fn reason(self) -> Option<&'static str> { match self { $( Self::$variant => $reason, )* } }
        }
    };
}

error_table! {
    /// Generic invalid request.
    BadRequest => "ERR_BAD_REQUEST", 400, InvalidArgument, Legacy, None;
    /// The request body could not be read (or exceeds `--max-body-size`).
    BodyRead => "ERR_BODY_READ", 400, InvalidArgument, Legacy, None;
    /// The request body could not be decoded.
    MalformedRequest => "ERR_MALFORMED_REQUEST", 400, InvalidArgument, Legacy, None;
    /// A state key contains `||`.
    StateIllegalKey => "ERR_MALFORMED_REQUEST", 400, InvalidArgument, Rich, Some("DAPR_STATE_ILLEGAL_KEY");
    /// An API compiled out or not built yet.
    ApiUnimplemented => "ERR_API_UNIMPLEMENTED", 501, Unimplemented, Legacy, None;
    /// Generic fallback.
    Generic => "ERROR", 500, Unknown, Legacy, None;
    /// Service invocation without a target app-id.
    DirectInvokeNoAppId => "ERR_DIRECT_INVOKE", 404, NotFound, Legacy, None;
    /// Service invocation failure.
    DirectInvoke => "ERR_DIRECT_INVOKE", 500, Internal, Legacy, None;
    /// Service invocation refused by the target's open circuit breaker (daprd's gRPC API
    /// answers `Unknown` here).
    DirectInvokeCircuitOpen => "ERR_DIRECT_INVOKE", 500, Unknown, Legacy, None;
    /// Service invocation ended by the target's resiliency timeout.
    DirectInvokeTimeout => "ERR_DIRECT_INVOKE", 500, DeadlineExceeded, Legacy, None;
    /// Service invocation denied by the callee's access-control policy.
    DirectInvokeForbidden => "ERR_DIRECT_INVOKE", 403, PermissionDenied, Legacy, None;
    /// A call on the internal port for an app-id this sidecar does not serve.
    DirectInvokeWrongApp => "ERR_DIRECT_INVOKE", 404, NotFound, Legacy, None;
    /// `/v1.0/healthz` not ready.
    HealthNotReady => "ERR_HEALTH_NOT_READY", 500, Internal, Legacy, None;
    /// `/v1.0/healthz?appid=` mismatch.
    HealthAppIdNotMatch => "ERR_HEALTH_APPID_NOT_MATCH", 500, Internal, Legacy, None;
    /// `/v1.0/healthz/outbound` not ready.
    OutboundHealthNotReady => "ERR_OUTBOUND_HEALTH_NOT_READY", 500, Internal, Legacy, None;
    /// No state store is configured.
    StateStoreNotConfigured => "ERR_STATE_STORE_NOT_CONFIGURED", 500, FailedPrecondition, Rich, Some("DAPR_STATE_NOT_CONFIGURED");
    /// The named state store does not exist.
    StateStoreNotFound => "ERR_STATE_STORE_NOT_FOUND", 400, InvalidArgument, Rich, Some("DAPR_STATE_NOT_FOUND");
    /// The store has no transactions.
    StateTransactionsNotSupported => "ERR_STATE_STORE_NOT_SUPPORTED", 500, Unimplemented, Rich, Some("DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED");
    /// The store has no query API.
    StateQueryNotSupported => "ERR_STATE_STORE_NOT_SUPPORTED", 500, Internal, Rich, Some("DAPR_STATE_QUERYING_NOT_SUPPORTED");
    /// The transaction holds more operations than the store allows.
    StateTooManyTransactions => "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS", 400, InvalidArgument, Rich, Some("DAPR_STATE_TOO_MANY_TRANSACTIONS");
    /// A state query failed.
    StateQuery => "ERR_STATE_QUERY", 500, Internal, Rich, Some("DAPR_STATE_QUERY_FAILED");
    /// A state read failed.
    StateGet => "ERR_STATE_GET", 500, Internal, Legacy, None;
    /// A state write failed.
    StateSave => "ERR_STATE_SAVE", 500, Internal, Legacy, None;
    /// A state write's ETag did not match.
    StateSaveETagMismatch => "ERR_STATE_SAVE", 409, Aborted, Legacy, None;
    /// A state write's ETag was malformed.
    StateSaveETagInvalid => "ERR_STATE_SAVE", 400, InvalidArgument, Legacy, None;
    /// A state delete failed.
    StateDelete => "ERR_STATE_DELETE", 500, Internal, Legacy, None;
    /// A state delete's ETag did not match.
    StateDeleteETagMismatch => "ERR_STATE_DELETE", 409, Aborted, Legacy, None;
    /// A state delete's ETag was malformed.
    StateDeleteETagInvalid => "ERR_STATE_DELETE", 400, InvalidArgument, Legacy, None;
    /// A bulk state read failed.
    StateBulkGet => "ERR_STATE_BULK_GET", 500, Internal, Legacy, None;
    /// A bulk state delete failed (gRPC only).
    StateBulkDelete => "ERR_STATE_BULK_DELETE", 500, Internal, Legacy, None;
    /// A state transaction failed.
    StateTransaction => "ERR_STATE_TRANSACTION", 500, Internal, Legacy, None;
    /// An output binding is unknown, refuses the operation, or failed.
    InvokeOutputBinding => "ERR_INVOKE_OUTPUT_BINDING", 500, Internal, Legacy, None;
    /// A binding request's `data` could not be encoded.
    MalformedRequestData => "ERR_MALFORMED_REQUEST_DATA", 500, Internal, Legacy, None;
    /// A transaction operation type is unknown.
    NotSupportedStateOperation => "ERR_NOT_SUPPORTED_STATE_OPERATION", 400, InvalidArgument, Legacy, None;
    /// No secret store is configured.
    SecretStoresNotConfigured => "ERR_SECRET_STORES_NOT_CONFIGURED", 500, FailedPrecondition, Legacy, None;
    /// The named secret store does not exist (Dapr answers 401 here).
    SecretStoreNotFound => "ERR_SECRET_STORE_NOT_FOUND", 401, InvalidArgument, Legacy, None;
    /// Denied by the Configuration's secret scopes.
    SecretPermissionDenied => "ERR_PERMISSION_DENIED", 403, PermissionDenied, Legacy, None;
    /// A secret read failed.
    SecretGet => "ERR_SECRET_GET", 500, Internal, Legacy, None;
    /// No pub/sub component is configured.
    PubSubNotConfigured => "ERR_PUBSUB_NOT_CONFIGURED", 400, FailedPrecondition, Rich, Some("DAPR_PUBSUB_NOT_CONFIGURED");
    /// The pub/sub name is empty.
    PubSubEmpty => "ERR_PUBSUB_EMPTY", 404, InvalidArgument, Rich, Some("DAPR_PUBSUB_NAME_EMPTY");
    /// The named pub/sub does not exist.
    PubSubNotFound => "ERR_PUBSUB_NOT_FOUND", 404, InvalidArgument, Rich, Some("DAPR_PUBSUB_NOT_FOUND");
    /// The topic is empty.
    TopicNameEmpty => "ERR_TOPIC_NAME_EMPTY", 404, InvalidArgument, Rich, Some("DAPR_PUBSUB_TOPIC_NAME_EMPTY");
    /// The topic is not allowed for this app (component topic scopes).
    PubSubForbidden => "ERR_PUBSUB_FORBIDDEN", 403, PermissionDenied, Rich, Some("DAPR_PUBSUB_FORBIDDEN");
    /// The component failed to publish.
    PubSubPublishMessage => "ERR_PUBSUB_PUBLISH_MESSAGE", 500, Internal, Rich, Some("DAPR_PUBSUB_PUBLISH_MESSAGE");
    /// Bad publish metadata (for example `rawPayload`).
    PubSubRequestMetadata => "ERR_PUBSUB_REQUEST_METADATA", 400, InvalidArgument, Rich, Some("DAPR_PUBSUB_METADATA_DESERIALIZATION");
    /// A CloudEvent could not be built from the request.
    PubSubCloudEventsSer => "ERR_PUBSUB_CLOUD_EVENTS_SER", 500, InvalidArgument, Rich, Some("DAPR_PUBSUB_CLOUD_EVENT_CREATION");
    /// A bulk-publish entry does not match its content type.
    PubSubMarshalEnvelope => "ERR_PUBSUB_EVENTS_SER", 400, InvalidArgument, Rich, Some("DAPR_PUBSUB_MARSHAL_ENVELOPE");
    /// Bulk-publish entries are invalid (missing or duplicate entryId).
    PubSubMarshalEvents => "ERR_PUBSUB_EVENTS_SER", 400, InvalidArgument, Rich, Some("DAPR_PUBSUB_MARSHAL_EVENTS");
    /// The bulk-publish body could not be decoded.
    PubSubUnmarshalEvents => "ERR_PUBSUB_EVENTS_SER", 400, InvalidArgument, Rich, Some("DAPR_PUBSUB_UNMARSHAL_EVENTS");
}

/// A `google.rpc` error detail attached to rich errors.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// `google.rpc.ErrorInfo` (domain `dapr.io`).
    ErrorInfo {
        /// The reason string.
        reason: &'static str,
        /// Extra metadata.
        metadata: BTreeMap<String, String>,
    },
    /// `google.rpc.ResourceInfo`.
    ResourceInfo {
        /// `state`, `pubsub`, …
        resource_type: &'static str,
        /// The component name.
        resource_name: String,
        /// Optional description.
        description: String,
    },
    /// `google.rpc.BadRequest` with one field violation.
    BadRequest {
        /// The offending field (for state keys, the key).
        field: String,
        /// Why.
        description: String,
    },
    /// `google.rpc.Help` with one link.
    Help {
        /// Link text.
        description: &'static str,
        /// Link target.
        url: &'static str,
    },
}

/// An API failure: a table row, a human message, and for rich errors their details.
#[derive(Debug)]
pub struct ApiError {
    /// The table row.
    pub code: ErrorCode,
    /// The human message (lower-case, never containing metadata values).
    pub message: String,
    /// Details of rich errors (ErrorInfo last).
    pub details: Vec<Detail>,
}

impl ApiError {
    /// A legacy error with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut err = Self {
            code,
            message: message.into(),
            details: Vec::new(),
        };
        if let Some(reason) = code.reason() {
            err.details.push(Detail::ErrorInfo {
                reason,
                metadata: BTreeMap::new(),
            });
        }
        err
    }

    /// Adds ErrorInfo metadata to a rich error.
    pub fn with_info(mut self, key: &str, value: impl Into<String>) -> Self {
        if let Some(Detail::ErrorInfo { metadata, .. }) = self.details.last_mut() {
            metadata.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Inserts a detail before the trailing ErrorInfo.
    pub fn with_detail(mut self, detail: Detail) -> Self {
        let at = self.details.len().saturating_sub(1);
        self.details.insert(at, detail);
        self
    }

    /// `ERR_MALFORMED_REQUEST` for an undecodable body.
    pub fn malformed(reason: impl fmt::Display) -> Self {
        Self::new(ErrorCode::MalformedRequest, reason.to_string())
    }

    /// `ERR_BODY_READ`.
    pub fn body_read(reason: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::BodyRead,
            format!("failed to read request body: {reason}"),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// An error and its sources as one line (`outer: inner: root`), skipping a source whose text
/// the message already ends with.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_msg = s.to_string();
        if !msg.ends_with(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        cur = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows() {
        assert_eq!(ErrorCode::SecretStoreNotFound.http_status(), 401);
        assert_eq!(ErrorCode::StateSaveETagMismatch.code(), "ERR_STATE_SAVE");
        assert_eq!(ErrorCode::StateSaveETagMismatch.http_status(), 409);
        assert_eq!(
            ErrorCode::StateSaveETagMismatch.grpc_code(),
            GrpcCode::Aborted
        );
        let e = ApiError::new(ErrorCode::StateStoreNotFound, "x")
            .with_info("appID", "a")
            .with_detail(Detail::Help {
                description: "d",
                url: "u",
            });
        assert!(matches!(e.details.last(), Some(Detail::ErrorInfo { .. })));
        assert_eq!(e.details.len(), 2);
    }
}
