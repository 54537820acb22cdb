//! Local components for Tandem, needing no server:
//!
//! - [`file::LocalFileSecretStore`]: `secretstores.local.file`, secrets from a JSON file.
//! - [`env::LocalEnvSecretStore`]: `secretstores.local.env`, secrets from environment variables.
//!
//! [`metadata`] documents the settings of each.

pub mod env;
pub mod file;
pub mod metadata;

pub use env::LocalEnvSecretStore;
pub use file::LocalFileSecretStore;
