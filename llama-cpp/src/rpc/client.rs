//! The client side: a remote RPC server's devices join the local device list.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use llama_cpp_moe_sys as sys;

use super::entry_points;
use super::handshake::{self, HandshakeFailure};
use crate::{Backend, Device};

/// Why an RPC server could not be added.
///
/// Every variant is decided by this crate's own check of the endpoint, before ggml
/// connects to it: ggml's client has no timeouts and aborts the process on any
/// protocol error, so nothing that fails here reaches it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The endpoint is not `host:port`.
    #[error("RPC endpoint {0:?} is not host:port")]
    BadEndpoint(String),
    /// Nothing accepted a TCP connection at the endpoint within the timeout.
    #[error("RPC server {endpoint} is unreachable")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The connection error.
        source: std::io::Error,
    },
    /// The endpoint accepted the connection but did not finish the ggml RPC handshake
    /// within the timeout: a stalled or busy server (ggml's server takes one client at a
    /// time), or a service that waits for a different protocol (an HTTP server, say).
    #[error(
        "RPC server {endpoint} did not answer within {timeout:?} ({during}); \
         is it a ggml RPC server, and is no other client using it?"
    )]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The handshake timeout in force.
        timeout: Duration,
        /// The handshake step that timed out.
        during: &'static str,
    },
    /// The endpoint closed or reset the connection during the handshake.
    #[error("RPC server {endpoint} closed the connection ({during}); is it a ggml RPC server?")]
    ConnectionClosed {
        /// The endpoint.
        endpoint: String,
        /// The handshake step that was interrupted.
        during: &'static str,
    },
    /// The endpoint answered, but not in ggml's RPC protocol.
    #[error("{endpoint} is not a ggml RPC server: it answered {reply}")]
    NotRpcServer {
        /// The endpoint.
        endpoint: String,
        /// The start of its answer, as text or hex.
        reply: String,
    },
    /// A ggml RPC server whose protocol version this build cannot talk to.
    #[error(
        "RPC server {endpoint} speaks protocol {}.{}.{}, this build needs {}.x with x <= {}; \
         run an rpc-server from the same llama.cpp version",
        server.0, server.1, server.2, handshake::PROTOCOL_MAJOR, handshake::PROTOCOL_MINOR
    )]
    VersionMismatch {
        /// The endpoint.
        endpoint: String,
        /// The server's (major, minor, patch) version.
        server: (u8, u8, u8),
    },
    /// A ggml RPC server that reports no devices.
    #[error("RPC server {0} has no devices to serve")]
    NoDevices(String),
    /// A socket error other than the above during the handshake.
    #[error("RPC handshake with {endpoint} failed ({during})")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The handshake step that failed.
        during: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// ggml returned no registry for the server.
    #[error("ggml could not add RPC server {0}")]
    Failed(String),
}

/// How long [`Backend::add_rpc_server`] waits for an endpoint to accept a connection and
/// answer the handshake, in all, before it gives up with an error. A local or LAN
/// server answers in milliseconds; use [`Backend::add_rpc_server_with_timeout`] for a
/// different bound.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Endpoints already registered, with the address of their ggml registry; ggml must see
/// each registry registered exactly once or its devices appear twice.
static REGISTERED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

impl Backend {
    /// Adds the devices of a ggml RPC server (`host:port`, as started by `rpc-server`
    /// or [`RpcServerConfig::serve`](crate::rpc::RpcServerConfig::serve)) to the
    /// registry, so models can offload to it like to a local GPU. Adding the same
    /// endpoint again returns its devices without registering them twice.
    ///
    /// Waits at most [`DEFAULT_HANDSHAKE_TIMEOUT`]; see
    /// [`Self::add_rpc_server_with_timeout`], which documents the checks.
    ///
    /// C equivalent: `ggml_backend_register(ggml_backend_rpc_add_server(endpoint))`;
    /// `llama-cli --rpc host:port`.
    ///
    /// # Errors
    /// As [`Self::add_rpc_server_with_timeout`].
    pub fn add_rpc_server(&self, endpoint: &str) -> Result<Vec<Device>, RpcError> {
        self.add_rpc_server_with_timeout(endpoint, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// [`Self::add_rpc_server`] with a bound on the whole check: connecting, the
    /// protocol handshake and the device-count query must finish within `timeout`.
    ///
    /// ggml's own client waits forever on a silent peer and aborts the process on
    /// anything unexpected, so this crate first runs the handshake itself over its own
    /// connection (HELLO with the protocol version, then the device count), with socket
    /// timeouts, and hands the endpoint to ggml only when that succeeds. What remains
    /// outside our control: a server that passes the check and then fails (dies, stalls
    /// or answers garbage) while ggml talks to it, including mid-generation, aborts or
    /// blocks this process inside ggml; see `docs/security.md`. Only add servers you run
    /// on a network you trust.
    ///
    /// # Errors
    /// [`RpcError::BadEndpoint`] for a malformed endpoint, [`RpcError::Unreachable`] when
    /// nothing accepts a connection there, [`RpcError::Timeout`],
    /// [`RpcError::ConnectionClosed`], [`RpcError::NotRpcServer`] or
    /// [`RpcError::VersionMismatch`] when the peer is not a compatible ggml RPC server,
    /// [`RpcError::NoDevices`] or [`RpcError::Failed`] when there is nothing to add.
    pub fn add_rpc_server_with_timeout(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Vec<Device>, RpcError> {
        let (host, port) =
            parse(endpoint).ok_or_else(|| RpcError::BadEndpoint(endpoint.to_owned()))?;
        let registered_reg = |endpoint: &str| {
            let guard = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().and_then(|map| map.get(endpoint).copied())
        };
        if let Some(reg) = registered_reg(endpoint) {
            return Ok(self.devices_of(reg as sys::ggml_backend_reg_t));
        }
        // Without the lock: a stalled endpoint must not hold up other endpoints.
        probe(endpoint, host, port, timeout)?;
        let mut guard = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        let registered = guard.get_or_insert_with(HashMap::new);
        if let Some(&reg) = registered.get(endpoint) {
            // Another thread added it while we probed.
            return Ok(self.devices_of(reg as sys::ggml_backend_reg_t));
        }
        let c_endpoint =
            CString::new(endpoint).map_err(|_| RpcError::BadEndpoint(endpoint.to_owned()))?;
        crate::logging::clear_last_error();
        // SAFETY: NUL-terminated endpoint; a compatible server answered our own
        // handshake just now, so ggml's connect and handshake (which abort on failure)
        // are expected to succeed.
        let reg = unsafe { entry_points::add_server(c_endpoint.as_ptr()) }.ok_or_else(|| {
            RpcError::Failed(format!("{endpoint} (this build has no RPC backend)"))
        })?;
        if reg.is_null() {
            return Err(RpcError::Failed(endpoint.to_owned()));
        }
        // SAFETY: a new RPC registry, registered once (guarded by REGISTERED).
        unsafe { sys::ggml_backend_register(reg) };
        registered.insert(endpoint.to_owned(), reg as usize);
        Ok(self.devices_of(reg))
    }

    /// The devices of one server, asked of its own registry: ggml points every RPC
    /// device at the shared "RPC" registry, so the global list (`Backend::devices`)
    /// cannot tell which server a device belongs to.
    fn devices_of(&self, reg: sys::ggml_backend_reg_t) -> Vec<Device> {
        // SAFETY: reg is a live RPC registry (registered, never freed).
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < count.
                let dev = unsafe { sys::ggml_backend_reg_dev_get(reg, i) };
                // SAFETY: a device of a registered registry lives until process exit.
                NonNull::new(dev).map(|ptr| unsafe { Device::from_raw(ptr) })
            })
            .collect()
    }
}

/// Splits like ggml's `parse_endpoint` (at the first ':'), but strictly: a non-empty
/// host and a port that is a whole u16.
fn parse(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.split_once(':')?;
    if host.is_empty() || endpoint.contains('\0') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Runs our handshake against the first IPv4 address of `host` (ggml's client resolves
/// with `gethostbyname` and connects over IPv4 only, so that is the address it will use).
fn probe(endpoint: &str, host: &str, port: u16, timeout: Duration) -> Result<(), RpcError> {
    let endpoint = endpoint.to_owned();
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|source| RpcError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        })?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| RpcError::Unreachable {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no IPv4 address (ggml's RPC client connects over IPv4 only)",
            ),
        })?;
    match handshake::check(addr, timeout) {
        Ok(info) => {
            log::debug!(target: "llama_cpp_moe", "RPC server {endpoint}: {} device(s)", info.devices);
            Ok(())
        }
        Err(failure) => Err(match failure {
            HandshakeFailure::Connect(source) => RpcError::Unreachable { endpoint, source },
            HandshakeFailure::TimedOut { during } => RpcError::Timeout {
                endpoint,
                timeout,
                during,
            },
            HandshakeFailure::Closed { during } => RpcError::ConnectionClosed { endpoint, during },
            HandshakeFailure::NotRpc { reply } => RpcError::NotRpcServer { endpoint, reply },
            HandshakeFailure::Version {
                major,
                minor,
                patch,
            } => RpcError::VersionMismatch {
                endpoint,
                server: (major, minor, patch),
            },
            HandshakeFailure::NoDevices => RpcError::NoDevices(endpoint),
            HandshakeFailure::Io { during, source } => RpcError::Io {
                endpoint,
                during,
                source,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn endpoints_are_parsed_strictly() {
        assert_eq!(parse("127.0.0.1:50052"), Some(("127.0.0.1", 50052)));
        assert_eq!(parse("localhost:1"), Some(("localhost", 1)));
        assert_eq!(parse("127.0.0.1"), None);
        assert_eq!(parse(":50052"), None);
        assert_eq!(parse("host:port"), None);
        assert_eq!(parse("host:70000"), None);
    }
}
