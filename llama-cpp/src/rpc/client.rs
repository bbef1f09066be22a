//! The client side: a remote RPC server's devices join the local device list.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{TcpStream, ToSocketAddrs};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use llama_cpp_moe_sys as sys;

use super::entry_points;
use crate::{Backend, Device};

/// Why an RPC server could not be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The endpoint is not `host:port`.
    #[error("RPC endpoint {0:?} is not host:port")]
    BadEndpoint(String),
    /// Nothing accepted a TCP connection at the endpoint.
    #[error("RPC server {endpoint} is unreachable: {source}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The connection error.
        source: std::io::Error,
    },
    /// ggml returned no registry for the server.
    #[error("ggml could not add RPC server {0}")]
    Failed(String),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Endpoints already registered, with the address of their ggml registry; ggml must see
/// each registry registered exactly once or its devices appear twice.
static REGISTERED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

impl Backend {
    /// Adds the devices of a ggml RPC server (`host:port`, as started by `rpc-server`
    /// or [`RpcServerConfig::serve`](crate::rpc::RpcServerConfig::serve)) to the
    /// registry, so models can offload to it like to a local GPU. Adding the same
    /// endpoint again returns its devices without registering them twice.
    ///
    /// ggml aborts the process when it cannot reach the server, so this first parses
    /// the endpoint and opens (and closes) a TCP connection itself; a server that is not
    /// listening is a typed error. A listener that accepts but is not a compatible ggml
    /// RPC server still makes ggml abort: only add endpoints you started.
    ///
    /// C equivalent: `ggml_backend_register(ggml_backend_rpc_add_server(endpoint))`;
    /// `llama-cli --rpc host:port`.
    ///
    /// # Errors
    /// [`RpcError::BadEndpoint`] for a malformed endpoint, [`RpcError::Unreachable`] when
    /// nothing accepts a connection there, [`RpcError::Failed`] when ggml reports no
    /// devices.
    pub fn add_rpc_server(&self, endpoint: &str) -> Result<Vec<Device>, RpcError> {
        let (host, port) =
            parse(endpoint).ok_or_else(|| RpcError::BadEndpoint(endpoint.to_owned()))?;
        let mut guard = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        let registered = guard.get_or_insert_with(HashMap::new);
        if let Some(&reg) = registered.get(endpoint) {
            return Ok(self.devices_of(reg as sys::ggml_backend_reg_t));
        }
        probe(endpoint, host, port)?;
        let c_endpoint =
            CString::new(endpoint).map_err(|_| RpcError::BadEndpoint(endpoint.to_owned()))?;
        crate::log::clear_last_error();
        // SAFETY: NUL-terminated endpoint; the server accepted a connection just now, so
        // ggml's connect (which aborts on failure) is expected to succeed.
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

fn probe(endpoint: &str, host: &str, port: u16) -> Result<(), RpcError> {
    let unreachable = |source| RpcError::Unreachable {
        endpoint: endpoint.to_owned(),
        source,
    };
    let addrs = (host, port).to_socket_addrs().map_err(unreachable)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            // The server handles one client at a time and goes back to accept() when
            // this probe disconnects without a HELLO.
            Ok(_stream) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(unreachable(last))
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
