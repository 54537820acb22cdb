//! Bindings that need no server of their own:
//!
//! - [`cron`]: `bindings.cron`, an input binding firing on a schedule ([`schedule`]).
//! - [`http`]: `bindings.http`, an output binding calling an HTTP(S) endpoint.
//! - [`localstorage`]: `bindings.localstorage`, an output binding on files under a root folder.

pub mod cron;
pub mod http;
pub mod localstorage;
pub mod schedule;

pub use cron::CronBinding;
pub use http::HttpBinding;
pub use localstorage::LocalStorageBinding;
