//! `GetSecret` and `GetBulkSecret`: call [`tandem_runtime::secrets::SecretsService`].

use dapr::dapr::proto::runtime::v1 as rt;
use tandem_runtime::Runtime;
use tonic::{Request, Response, Status};

use super::error::to_status;

/// `GetSecret`.
pub(super) async fn get(
    rt: &Runtime,
    req: Request<rt::GetSecretRequest>,
) -> Result<Response<rt::GetSecretResponse>, Status> {
    let req = req.into_inner();
    let secret = rt
        .secrets
        .get(&req.store_name, &req.key, &req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(rt::GetSecretResponse {
        data: secret.into_iter().collect(),
    }))
}

/// `GetBulkSecret`: every secret the scopes allow, each a map of values.
pub(super) async fn bulk(
    rt: &Runtime,
    req: Request<rt::GetBulkSecretRequest>,
) -> Result<Response<rt::GetBulkSecretResponse>, Status> {
    let req = req.into_inner();
    let all = rt
        .secrets
        .bulk_get(&req.store_name, &req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(rt::GetBulkSecretResponse {
        data: all
            .into_iter()
            .map(|(name, secret)| {
                (
                    name,
                    rt::SecretResponse {
                        secrets: secret.into_iter().collect(),
                    },
                )
            })
            .collect(),
    }))
}
