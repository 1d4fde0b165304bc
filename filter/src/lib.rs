//! mcp-guard: an Envoy Wasm filter that puts MCP servers behind one identity, one policy and
//! one audit trail.
//!
//! The request's path is in [`flow`]. Each concern has its module: [`jwt`] (tokens), [`mcp`]
//! (JSON-RPC parsing), [`policy`] (CEL rules), [`audit`] (records), [`oauth`] (the MCP
//! authorization spec), [`config`] (plugin configuration). None of them calls Envoy: host access
//! goes through the [`host::Host`] trait, implemented with hostcalls by the adapter crate
//! (`filter/wasm`, wasm32 only). This crate has no proxy-wasm dependency, so the compiler keeps
//! hostcalls out of it (docs/architecture.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod audit;
pub mod bytes;
pub mod config;
pub mod crypto;
pub mod discovery;
pub mod dpop;
pub mod env;
pub mod error;
mod es384;
pub mod feeds;
pub mod flow;
pub mod host;
pub mod http;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod lease;
pub mod limits;
pub mod mcp;
pub mod methods;
pub mod metrics;
pub mod oauth;
pub mod pins;
pub mod policy;
pub mod protocol;
pub mod refusal;
pub mod reply;
pub mod response;
pub mod resume;
pub mod revocation;
pub mod rls;
pub mod scan;
pub mod seal;
pub mod session;
pub mod sse;
pub mod tasks;
pub mod token_cache;
pub mod url;
