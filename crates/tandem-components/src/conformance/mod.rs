//! Generic conformance suites, run by every component implementation.
//!
//! Each suite is a set of async functions taking the component under test, plus a macro that
//! expands to one `#[tokio::test]` per case. Optional cases are chosen by what the component
//! declares ([`crate::state::StateStore::features`], `transactional()`), and the suite checks
//! the converse: an undeclared ability answers [`crate::Error::NotSupported`].

pub mod pubsub;
pub mod secrets;
pub mod state;

/// A key unique to one test run, so suites can share a real backend.
pub fn unique_key(case: &str) -> String {
    format!("conformance-{case}-{}", uuid::Uuid::new_v4().simple())
}
