//! livetap: a live telemetry hub for mail servers (ingest → ring → matcher pool → SSE).
//!
//! The crate is laid out one folder per stage of the flow; see `ARCHITECTURE.md` for the
//! bird's-eye view and the invariants. `main.rs` is only the command line; tests, benchmarks
//! and fuzz targets link this library.

#![warn(missing_docs)]

pub mod alert;
pub mod auth;
pub mod config;
pub mod event;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod matcher;
pub mod metrics;
pub mod query;
pub mod ring;
pub mod service;
pub mod sse;
pub mod store;
pub mod subscriber;
pub mod tap;

pub use config::Config;
pub use http::server::Server;
pub use hub::Hub;

/// mimalloc is the global allocator for everything that links livetap (binary, tests,
/// benchmarks), so measurements see the allocator production uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
