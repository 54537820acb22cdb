//! HashiCorp Vault for Tandem: the `secretstores.hashicorp.vault` secret store, speaking
//! Vault's HTTP API (OpenBao serves the same API).
//!
//! - [`secrets::VaultSecretStore`]: get, bulk get and versions (`version_id`), on Dapr's paths.
//! - [`metadata`]: the settings Dapr users already write (`vaultAddr`, `vaultToken` /
//!   `vaultTokenMountPath`, `vaultKVPrefix`, `vaultKVUsePrefix`, `enginePath`,
//!   `vaultValueType`, the CA and TLS options) plus `vaultKVVersion` and `vaultNamespace`.
//! - `client`: one pooled HTTP client per component, with the TLS settings applied.
//! - `token`: the token, read again from its file when the file changes.

mod client;
pub mod metadata;
pub mod secrets;
mod token;

pub use secrets::VaultSecretStore;
