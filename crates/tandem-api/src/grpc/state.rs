//! State RPCs: convert the message, call [`tandem_runtime::state::StateService`], convert back.
//!
//! Values travel as bytes, unlike over HTTP where they are JSON: `SaveState` stores an item's
//! `value` as it came, unless the item's metadata says `contentType: application/json`, in
//! which case it must be JSON (it is stored as that JSON text, as an HTTP save would store it).
//! Reads hand back the stored bytes unchanged.
//!
//! Prost's `bytes` fields here are `Vec<u8>`: a value written arrives as a `Vec` that becomes
//! the stored `Bytes` without a copy; a value read is copied once into the answer's `Vec`
//! (only when the store still shares the buffer).

use dapr::dapr::proto::runtime::v1 as rt;
use tandem_runtime::state::{DeleteItem, TxOperation};
use tandem_runtime::{ApiError, ErrorCode, Runtime};
use tonic::{Request, Response, Status};

use super::error::to_status;

type Result<T> = std::result::Result<Response<T>, Status>;

/// `common.v1.StateOptions.StateConsistency` as Dapr's text.
fn consistency_text(value: i32) -> &'static str {
    match value {
        1 => "eventual",
        2 => "strong",
        _ => "",
    }
}

pub(super) use tandem_runtime::state::save_item_from_proto as save_item;
use tandem_runtime::state::{proto_etag as etag, proto_options as options};

/// `GetState`: a missing key is an empty answer, not an error. It takes and answers bare
/// messages: it needs no metadata, and the lean unary path calls it without tonic's wrappers.
pub(super) async fn get(
    rt: &Runtime,
    req: rt::GetStateRequest,
) -> std::result::Result<rt::GetStateResponse, Status> {
    let item = rt
        .state
        .get(
            &req.store_name,
            &req.key,
            consistency_text(req.consistency),
            &req.metadata,
        )
        .await
        .map_err(to_status)?;
    let Some(item) = item else {
        return Ok(rt::GetStateResponse::default());
    };
    Ok(rt::GetStateResponse {
        data: item.value.into(),
        etag: item.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
        metadata: item.metadata,
    })
}

/// `GetBulkState`: one item per key, per-key failures in `error`.
pub(super) async fn get_bulk(
    rt: &Runtime,
    req: Request<rt::GetBulkStateRequest>,
) -> Result<rt::GetBulkStateResponse> {
    let req = req.into_inner();
    let items = rt
        .state
        .bulk_get(&req.store_name, &req.keys, &req.metadata)
        .await
        .map_err(to_status)?;
    let items = items
        .into_iter()
        .map(|i| {
            let (data, etag, metadata) = match i.item {
                Some(item) => (
                    item.value.into(),
                    item.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
                    item.metadata,
                ),
                None => Default::default(),
            };
            rt::BulkStateItem {
                key: i.key,
                data,
                etag,
                error: i.error.unwrap_or_default(),
                metadata,
            }
        })
        .collect();
    Ok(Response::new(rt::GetBulkStateResponse { items }))
}

/// `SaveState`.
pub(super) async fn save(rt: &Runtime, req: Request<rt::SaveStateRequest>) -> Result<()> {
    let req = req.into_inner();
    let items = req
        .states
        .into_iter()
        .map(save_item)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(to_status)?;
    rt.state
        .save(&req.store_name, items)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `DeleteState`.
pub(super) async fn delete(rt: &Runtime, req: Request<rt::DeleteStateRequest>) -> Result<()> {
    let req = req.into_inner();
    rt.state
        .delete(
            &req.store_name,
            &req.key,
            etag(req.etag),
            options(req.options),
            req.metadata,
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `DeleteBulkState` (gRPC only).
pub(super) async fn delete_bulk(
    rt: &Runtime,
    req: Request<rt::DeleteBulkStateRequest>,
) -> Result<()> {
    let req = req.into_inner();
    let items = req
        .states
        .into_iter()
        .map(|s| DeleteItem {
            key: s.key,
            etag: etag(s.etag),
            metadata: s.metadata,
            options: options(s.options),
        })
        .collect();
    rt.state
        .bulk_delete(&req.store_name, items)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `ExecuteStateTransaction`: operations `upsert` and `delete`.
pub(super) async fn transaction(
    rt: &Runtime,
    req: Request<rt::ExecuteStateTransactionRequest>,
) -> Result<()> {
    let req = req.into_inner();
    let mut ops = Vec::with_capacity(req.operations.len());
    for op in req.operations {
        let item = op.request.unwrap_or_default();
        ops.push(match op.operation_type.as_str() {
            "upsert" => TxOperation::Upsert(save_item(item).map_err(to_status)?),
            "delete" => TxOperation::Delete {
                key: item.key,
                etag: etag(item.etag),
                metadata: item.metadata,
                options: options(item.options),
            },
            other => {
                return Err(to_status(ApiError::new(
                    ErrorCode::NotSupportedStateOperation,
                    format!("operation type {other} not supported"),
                )));
            }
        });
    }
    rt.state
        .transaction(&req.store_name, ops, req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `QueryStateAlpha1`: the query is JSON text, results carry the stored bytes.
pub(super) async fn query(
    rt: &Runtime,
    req: Request<rt::QueryStateRequest>,
) -> Result<rt::QueryStateResponse> {
    let req = req.into_inner();
    let resp = rt
        .state
        .query(&req.store_name, req.query.as_bytes(), &req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(rt::QueryStateResponse {
        results: resp
            .results
            .into_iter()
            .map(|r| rt::QueryStateItem {
                key: r.key,
                data: r.data.into(),
                etag: r.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
                error: String::new(),
            })
            .collect(),
        token: resp.token.unwrap_or_default(),
        metadata: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr::dapr::proto::common::v1 as common;
    use tandem_components::state::{Concurrency, Consistency, StateOptions};

    #[test]
    fn json_items_must_be_json_and_raw_items_are_kept() {
        let raw = common::StateItem {
            key: "k".into(),
            value: vec![0xff, 0x00],
            ..Default::default()
        };
        assert_eq!(save_item(raw).unwrap().value.as_ref(), &[0xff, 0x00]);
        let mut json = common::StateItem {
            key: "k".into(),
            value: b"{\"a\":1}".to_vec(),
            ..Default::default()
        };
        json.metadata
            .insert("contentType".into(), "application/json".into());
        assert_eq!(
            save_item(json.clone()).unwrap().value.as_ref(),
            b"{\"a\":1}"
        );
        json.value = b"nope".to_vec();
        assert_eq!(
            save_item(json).unwrap_err().code,
            ErrorCode::MalformedRequest
        );
    }

    #[test]
    fn options_map_the_enums() {
        let o = options(Some(common::StateOptions {
            concurrency: 1,
            consistency: 2,
        }));
        assert_eq!(o.concurrency, Concurrency::FirstWrite);
        assert_eq!(o.consistency, Consistency::Strong);
        assert_eq!(options(None), StateOptions::default());
        assert_eq!(consistency_text(2), "strong");
    }
}
