//! Reading request bodies under `--max-body-size`, and query-string metadata.

use std::collections::HashMap;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use tandem_runtime::ApiError;

/// Reads the whole body, failing with `ERR_BODY_READ` past `limit` bytes.
pub(crate) async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(ApiError::body_read(e)),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::body_read(format!(
        "the request body exceeds the maximum size of {limit} bytes (--max-body-size)"
    ))
}

/// Query parameters of a request: `metadata.*` entries and the plain ones Dapr reads.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) consistency: String,
    pub(crate) concurrency: String,
    pub(crate) appid: Option<String>,
}

impl Query {
    /// Parses a raw query string; the first value of each key wins, as in Dapr.
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut q = Query::default();
        let Some(raw) = raw else { return q };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if let Some(name) = k.strip_prefix("metadata.") {
                q.metadata
                    .entry(name.to_owned())
                    .or_insert_with(|| v.into_owned());
            } else if k == "consistency" && q.consistency.is_empty() {
                q.consistency = v.into_owned();
            } else if k == "concurrency" && q.concurrency.is_empty() {
                q.concurrency = v.into_owned();
            } else if k == "appid" && q.appid.is_none() {
                q.appid = Some(v.into_owned());
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_metadata() {
        let q = Query::parse(Some(
            "metadata.ttlInSeconds=5&metadata.ttlInSeconds=9&consistency=strong&metadata.a=b%20c&x=1",
        ));
        assert_eq!(q.metadata["ttlInSeconds"], "5");
        assert_eq!(q.metadata["a"], "b c");
        assert_eq!(q.consistency, "strong");
        assert_eq!(q.metadata.len(), 2);
    }
}
