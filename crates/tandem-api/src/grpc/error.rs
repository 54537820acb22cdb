//! The one place an [`ApiError`] becomes a gRPC [`Status`].
//!
//! A failure travels as daprd's do: the status code from the error table
//! ([`tandem_runtime::ErrorCode::grpc_code`]), the human message, and in the
//! `grpc-status-details-bin` trailer a binary `google.rpc.Status` whose `details` hold the
//! error's `google.rpc` messages (`BadRequest` / `Help`, `ResourceInfo`, then `ErrorInfo` last,
//! domain `dapr.io`).
//!
//! Daprd sends no details for its legacy errors (ETag mismatches, secret errors, …); Tandem
//! adds one `ErrorInfo` whose reason is the `ERR_*` code, so a client can tell the conditions
//! apart. Clients that look for no details are unaffected.
//!
//! The `google.rpc` detail messages are not in the `dapr` crate (it ships only
//! `google.rpc.Status`); they are written here from their published field numbers.

use std::collections::HashMap;

use bytes::Bytes;
use dapr::google::rpc::Status as RpcStatus;
use prost::Message;
use tandem_runtime::error::{ApiError, Detail};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The `domain` of every `ErrorInfo` Dapr sends.
pub const DOMAIN: &str = "dapr.io";

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorInfo {
    /// Why the error happened (`DAPR_STATE_NOT_FOUND`, `ERR_STATE_SAVE`, `Unauthorized`, …).
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Always `dapr.io`.
    #[prost(string, tag = "2")]
    pub domain: String,
    /// Extra facts (`appID`, `topic`, `http.code`, …).
    #[prost(map = "string, string", tag = "3")]
    pub metadata: HashMap<String, String>,
}

/// `google.rpc.ResourceInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceInfo {
    /// `state`, `pubsub`, …
    #[prost(string, tag = "1")]
    pub resource_type: String,
    /// The component name.
    #[prost(string, tag = "2")]
    pub resource_name: String,
    /// Always empty.
    #[prost(string, tag = "3")]
    pub owner: String,
    /// Optional description.
    #[prost(string, tag = "4")]
    pub description: String,
}

/// `google.rpc.BadRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct BadRequest {
    /// The offending fields.
    #[prost(message, repeated, tag = "1")]
    pub field_violations: Vec<FieldViolation>,
}

/// `google.rpc.BadRequest.FieldViolation`.
#[derive(Clone, PartialEq, Message)]
pub struct FieldViolation {
    /// The field (for state keys, the key).
    #[prost(string, tag = "1")]
    pub field: String,
    /// Why it is wrong.
    #[prost(string, tag = "2")]
    pub description: String,
}

/// `google.rpc.Help`.
#[derive(Clone, PartialEq, Message)]
pub struct Help {
    /// Where to read more.
    #[prost(message, repeated, tag = "1")]
    pub links: Vec<Link>,
}

/// `google.rpc.Help.Link`.
#[derive(Clone, PartialEq, Message)]
pub struct Link {
    /// Link text.
    #[prost(string, tag = "1")]
    pub description: String,
    /// Link target.
    #[prost(string, tag = "2")]
    pub url: String,
}

/// The `type_url` of `ErrorInfo` details.
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// The `type_url` of `ResourceInfo` details.
pub const RESOURCE_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ResourceInfo";
/// The `type_url` of `BadRequest` details.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// The `type_url` of `Help` details.
pub const HELP_TYPE: &str = "type.googleapis.com/google.rpc.Help";

fn any(type_url: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> prost_types::Any {
    any(
        ERROR_INFO_TYPE,
        &ErrorInfo {
            reason: reason.to_owned(),
            domain: DOMAIN.to_owned(),
            metadata,
        },
    )
}

fn detail_any(d: &Detail) -> prost_types::Any {
    match d {
        Detail::ErrorInfo { reason, metadata } => error_info(
            reason,
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        Detail::ResourceInfo {
            resource_type,
            resource_name,
            description,
        } => any(
            RESOURCE_INFO_TYPE,
            &ResourceInfo {
                resource_type: (*resource_type).to_owned(),
                resource_name: resource_name.clone(),
                owner: String::new(),
                description: description.clone(),
            },
        ),
        Detail::BadRequest { field, description } => any(
            BAD_REQUEST_TYPE,
            &BadRequest {
                field_violations: vec![FieldViolation {
                    field: field.clone(),
                    description: description.clone(),
                }],
            },
        ),
        Detail::Help { description, url } => any(
            HELP_TYPE,
            &Help {
                links: vec![Link {
                    description: (*description).to_owned(),
                    url: (*url).to_owned(),
                }],
            },
        ),
    }
}

fn with_details(
    code: Code,
    message: String,
    details: Vec<prost_types::Any>,
    metadata: MetadataMap,
) -> Status {
    let encoded = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details,
    }
    .encode_to_vec();
    Status::with_details_and_metadata(code, message, Bytes::from(encoded), metadata)
}

/// Renders a runtime error: table code, human message, `google.rpc` details.
pub fn to_status(e: ApiError) -> Status {
    let code = Code::from(e.code.grpc_code() as i32);
    tracing::debug!(code = e.code.code(), message = %e.message, "api error");
    tandem_runtime::metrics::record_error_code(e.code);
    let mut details: Vec<prost_types::Any> = e.details.iter().map(detail_any).collect();
    if !details.iter().any(|d| d.type_url == ERROR_INFO_TYPE) {
        details.push(error_info(e.code.code(), HashMap::new()));
    }
    with_details(code, e.message, details, MetadataMap::new())
}

/// daprd's `ErrorFromHTTPResponseCode`: an HTTP status (a callee's answer, or the API token
/// check) as a gRPC error. The code follows §3.4 of the contract, the message is the status
/// text, and an `ErrorInfo{reason: <status text>, metadata: {http.code, http.error_message}}`
/// carries the detail (cut to 63 bytes, as daprd does).
pub fn http_status_error(status: u16, detail: &str, metadata: MetadataMap) -> Status {
    let text = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default();
    let mut cut = detail.len().min(63);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let info = error_info(
        text,
        HashMap::from([
            ("http.code".to_owned(), status.to_string()),
            ("http.error_message".to_owned(), detail[..cut].to_owned()),
        ]),
    );
    with_details(
        code_from_http(status),
        text.to_owned(),
        vec![info],
        metadata,
    )
}

/// daprd's `CodeFromHTTPStatus` (§3.4), 400 ⇒ `Internal` quirk included.
pub fn code_from_http(status: u16) -> Code {
    match status {
        200..=299 => Code::Ok,
        408 => Code::Cancelled,
        400 => Code::Internal,
        500 => Code::Unknown,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The answer of every RPC Tandem does not serve yet.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by Tandem yet"))
}

#[cfg(test)]
mod tests {
    use tandem_runtime::ErrorCode;

    use super::*;

    fn decode(s: &Status) -> RpcStatus {
        RpcStatus::decode(s.details()).expect("google.rpc.Status")
    }

    #[test]
    fn rich_errors_keep_their_details_in_order() {
        let e = ApiError::new(ErrorCode::StateIllegalKey, "bad key")
            .with_detail(Detail::BadRequest {
                field: "a||b".into(),
                description: "bad key".into(),
            })
            .with_detail(Detail::ResourceInfo {
                resource_type: "state",
                resource_name: "store".into(),
                description: String::new(),
            });
        let s = to_status(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "bad key");
        let rpc = decode(&s);
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        let types: Vec<&str> = rpc.details.iter().map(|d| d.type_url.as_str()).collect();
        assert_eq!(
            types,
            [BAD_REQUEST_TYPE, RESOURCE_INFO_TYPE, ERROR_INFO_TYPE]
        );
        let info = ErrorInfo::decode(rpc.details[2].value.as_slice()).unwrap();
        assert_eq!(info.reason, "DAPR_STATE_ILLEGAL_KEY");
        assert_eq!(info.domain, DOMAIN);
    }

    #[test]
    fn legacy_errors_get_an_error_info_named_by_their_code() {
        let s = to_status(ApiError::new(ErrorCode::StateSaveETagMismatch, "stale"));
        assert_eq!(s.code(), Code::Aborted);
        let rpc = decode(&s);
        assert_eq!(rpc.details.len(), 1);
        let info = ErrorInfo::decode(rpc.details[0].value.as_slice()).unwrap();
        assert_eq!(info.reason, "ERR_STATE_SAVE");
    }

    #[test]
    fn http_statuses_map_like_daprd() {
        let s = http_status_error(401, &"x".repeat(100), MetadataMap::new());
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "Unauthorized");
        let info = ErrorInfo::decode(decode(&s).details[0].value.as_slice()).unwrap();
        assert_eq!(info.reason, "Unauthorized");
        assert_eq!(info.metadata["http.code"], "401");
        assert_eq!(info.metadata["http.error_message"].len(), 63);
        assert_eq!(code_from_http(400), Code::Internal);
        assert_eq!(code_from_http(500), Code::Unknown);
        assert_eq!(code_from_http(204), Code::Ok);
    }
}
