//! Semantic errors returned by components.

/// A boxed error from a backend client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every component operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong inside a component, as a kind the runtime can map to Dapr's error table.
///
/// Messages never contain metadata values: those may be secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conditional write or delete did not match the stored ETag (or `first-write` found an
    /// existing key).
    #[error("possible etag mismatch. error from state store: etag does not match")]
    ETagMismatch,
    /// The ETag supplied is not in this store's format.
    #[error("invalid etag value: {0}")]
    ETagInvalid(String),
    /// The operation or option is not supported by this component.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// A metadata field of the component definition is missing or malformed.
    #[error("invalid metadata field '{field}': {reason}")]
    InvalidMetadata {
        /// The metadata field's name as written in the YAML.
        field: String,
        /// Why it was rejected (never the value itself).
        reason: String,
    },
    /// A request argument is malformed (for example a non-numeric `ttlInSeconds`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The requested item does not exist (used by secret stores).
    #[error("{0}")]
    NotFound(String),
    /// The backend failed.
    #[error("{0}")]
    Backend(#[source] BoxError),
}

impl Error {
    /// Wraps any backend error.
    pub fn backend(err: impl Into<BoxError>) -> Self {
        Error::Backend(err.into())
    }

    /// A missing or malformed metadata field.
    pub fn invalid_metadata(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidMetadata {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
