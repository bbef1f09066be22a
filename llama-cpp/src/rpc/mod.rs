//! ggml's RPC protocol, both ways: use another process's devices
//! ([`Backend::add_rpc_server`](crate::Backend::add_rpc_server)) and serve this
//! machine's devices to other processes ([`RpcServerConfig`]).
//!
//! The protocol has no authentication or encryption: serve on loopback unless the
//! network is trusted.

mod client;
mod entry_points;
mod handshake;
mod server;

pub use client::{RpcError, DEFAULT_HANDSHAKE_TIMEOUT};
pub use server::{RpcServeError, RpcServerConfig};
