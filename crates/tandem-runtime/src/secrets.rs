//! The secrets building block, with the Configuration's secret scopes applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tandem_components::secrets::Secret;
use tandem_components::state::RequestMetadata;

use crate::components::{LiveComponents, SecretEntry};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{ComponentFamily, Metrics};
use crate::resiliency::call_component;

/// Access rules for one secret store (`spec.secrets.scopes[]` of the Configuration).
pub use tandem_config::SecretScope;

/// The secrets service.
pub struct SecretsService {
    components: Arc<LiveComponents>,
    scopes: HashMap<String, SecretScope>,
    metrics: Arc<Metrics>,
}

impl SecretsService {
    pub(crate) fn new(
        components: Arc<LiveComponents>,
        scopes: HashMap<String, SecretScope>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            components,
            scopes,
            metrics,
        }
    }

    fn allowed(&self, store: &str, secret: &str) -> bool {
        self.scopes.get(store).is_none_or(|s| s.allows(secret))
    }

    fn store(&self, name: &str) -> Result<Arc<SecretEntry>, ApiError> {
        let components = self.components.load();
        if components.secrets.is_empty() {
            return Err(ApiError::new(
                ErrorCode::SecretStoresNotConfigured,
                "secret store is not configured",
            ));
        }
        components.secrets.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::SecretStoreNotFound,
                format!("failed finding secret store with key {name}"),
            )
        })
    }

    /// Reads one secret.
    pub async fn get(
        &self,
        store_name: &str,
        key: &str,
        metadata: &RequestMetadata,
    ) -> Result<Secret, ApiError> {
        let store = self.store(store_name)?;
        if !self.allowed(store_name, key) {
            return Err(ApiError::new(
                ErrorCode::SecretPermissionDenied,
                format!("access denied by policy to get {key:?} from {store_name:?}"),
            ));
        }
        let start = Instant::now();
        let res = call_component(store.outbound(), (), |()| store.store.get(key, metadata)).await;
        self.metrics.component(
            ComponentFamily::Secret,
            store_name,
            "get",
            res.is_ok(),
            start,
        );
        res.map_err(|e| {
            ApiError::new(
                ErrorCode::SecretGet,
                format!("failed getting secret with key {key} from secret store {store_name}: {e}"),
            )
        })
    }

    /// Reads every secret the scopes allow.
    pub async fn bulk_get(
        &self,
        store_name: &str,
        metadata: &RequestMetadata,
    ) -> Result<BTreeMap<String, Secret>, ApiError> {
        let store = self.store(store_name)?;
        let start = Instant::now();
        let res = call_component(store.outbound(), (), |()| store.store.bulk_get(metadata)).await;
        self.metrics.component(
            ComponentFamily::Secret,
            store_name,
            "bulk_get",
            res.is_ok(),
            start,
        );
        let mut all = res.map_err(|e| {
            ApiError::new(
                ErrorCode::SecretGet,
                format!("failed getting secrets from secret store {store_name}: {e}"),
            )
        })?;
        all.retain(|name, _| self.allowed(store_name, name));
        Ok(all)
    }
}
