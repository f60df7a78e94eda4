//! The sans-IO core of weft: wire formats, tables, routing decisions, lease
//! semantics and configuration. Nothing in here opens a file descriptor or
//! reads a clock; callers pass bytes and `now` in and act on what comes back.

pub mod allocate;
pub mod arp;
pub mod batch;
pub mod checksum;
pub mod config;
pub mod fdb;
#[doc(hidden)]
pub mod fixtures;
pub mod flow;
pub(crate) mod json;
pub mod lease;
pub mod log_budget;
pub mod mac;
pub mod ndp;
pub mod offload;
pub mod router;
pub mod subnet_env;
pub mod watcher;
pub mod wire;
