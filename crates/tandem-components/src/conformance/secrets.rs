//! The secret store conformance suite.
//!
//! The store under test must hold the fixture described by [`FIXTURE`]: a secret `conftest-a`
//! with value `value-a`, and a secret `conftest-b` with value `value-b`.

use std::sync::Arc;

use crate::error::Error;
use crate::secrets::SecretStore;
use crate::state::RequestMetadata;

/// The secrets every store under test must be seeded with: `(name, value)`.
pub const FIXTURE: &[(&str, &str)] = &[("conftest-a", "value-a"), ("conftest-b", "value-b")];

/// Expands to one test per case. `$build` yields `Option<Arc<dyn SecretStore>>` seeded with
/// [`FIXTURE`]; `None` skips.
#[macro_export]
macro_rules! secret_store_conformance {
    ($build:expr) => {
        $crate::secret_store_conformance!(@cases $build; get_one, get_missing, bulk_get_all);
    };
    (@cases $build:expr; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(store) = $build.await {
                    $crate::conformance::secrets::$case(store).await;
                }
            }
        )*
    };
}

/// Each fixture secret reads back with its value under its own name.
pub async fn get_one(store: Arc<dyn SecretStore>) {
    for (name, value) in FIXTURE {
        let secret = store
            .get(name, &RequestMetadata::new())
            .await
            .expect("get secret");
        assert_eq!(
            secret.get(*name).map(String::as_str),
            Some(*value),
            "secret {name}"
        );
    }
}

/// A missing secret is `NotFound`.
pub async fn get_missing(store: Arc<dyn SecretStore>) {
    let res = store
        .get("conftest-does-not-exist", &RequestMetadata::new())
        .await;
    assert!(matches!(res, Err(Error::NotFound(_))), "got {res:?}");
}

/// Bulk get returns at least every fixture secret.
pub async fn bulk_get_all(store: Arc<dyn SecretStore>) {
    let all = store
        .bulk_get(&RequestMetadata::new())
        .await
        .expect("bulk get");
    for (name, value) in FIXTURE {
        let secret = all
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing from bulk"));
        assert_eq!(secret.get(*name).map(String::as_str), Some(*value));
    }
}
