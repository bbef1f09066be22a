//! Serving this machine's devices to other processes over ggml's RPC protocol.
//!
//! The client side (using a remote device) is [`crate::Backend::add_rpc_server`]. The
//! protocol has no authentication or encryption: serve on loopback unless the network
//! is trusted.

use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::path::PathBuf;

use llama_cpp_moe_sys as sys;

use crate::Backend;

/// Why an RPC server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcServeError {
    /// The host is not an IP address.
    #[error("invalid host {0:?}: expected an IP address such as 127.0.0.1")]
    InvalidHost(String),
    /// A non-loopback address was requested without `allow_remote`.
    #[error(
        "refusing to serve on {0}: the ggml RPC protocol has no authentication; \
         bind to 127.0.0.1 or allow remote access explicitly"
    )]
    RemoteNotAllowed(IpAddr),
    /// No device with that name exists.
    #[error("no device named {name:?}; available: {available}")]
    UnknownDevice {
        /// The requested name.
        name: String,
        /// Comma-separated names of the devices that exist.
        available: String,
    },
    /// The cache directory path cannot be passed to C.
    #[error("cache directory path contains a NUL byte or is not valid: {0:?}")]
    InvalidCacheDir(PathBuf),
    /// The port is already taken.
    #[error("cannot bind {0}: {1}")]
    Bind(String, std::io::Error),
}

/// What an RPC server serves and where.
#[derive(Debug, Clone)]
#[must_use]
pub struct RpcServerConfig {
    host: String,
    port: u16,
    threads: usize,
    cache_dir: Option<PathBuf>,
    devices: Vec<String>,
    allow_remote: bool,
}

impl RpcServerConfig {
    /// Serve on `host:port`; loopback only unless [`Self::allow_remote`].
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RpcServerConfig {
            host: host.into(),
            port,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cache_dir: None,
            devices: Vec::new(),
            allow_remote: false,
        }
    }

    /// CPU threads the served CPU backend uses.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// A directory where the server caches tensors clients send, by hash.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Serve these devices (by ggml name, e.g. `CPU`, `CUDA0`) instead of the default:
    /// every accelerator, or the CPU when there is none.
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.devices.push(name.into());
        self
    }

    /// Allow binding to a non-loopback address.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// The `host:port` endpoint string.
    pub fn endpoint(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// Checks the address and resolves the devices; then blocks serving clients forever.
    ///
    /// C equivalent: `rpc-server --host H --port P -t N [-c DIR] [-d DEV]`.
    pub fn serve(self, _backend: &Backend) -> Result<std::convert::Infallible, RpcServeError> {
        let ip: IpAddr = self
            .host
            .parse()
            .map_err(|_| RpcServeError::InvalidHost(self.host.clone()))?;
        if !ip.is_loopback() && !self.allow_remote {
            return Err(RpcServeError::RemoteNotAllowed(ip));
        }
        let endpoint = self.endpoint();
        // ggml only prints and returns when it cannot bind; find out first, as an error.
        drop(
            std::net::TcpListener::bind((ip, self.port))
                .map_err(|e| RpcServeError::Bind(endpoint.clone(), e))?,
        );
        let mut devices = self.resolve_devices()?;
        let c_endpoint = CString::new(endpoint).expect("an IP endpoint has no NUL byte");
        let c_cache = match &self.cache_dir {
            Some(dir) => Some(
                crate::model::path_to_cstring(dir)
                    .ok_or_else(|| RpcServeError::InvalidCacheDir(dir.clone()))?,
            ),
            None => None,
        };
        // SAFETY: the strings and the device array outlive the call, which never returns
        // normally; the devices come from ggml's registry and live for the process.
        let started = unsafe {
            crate::rpc_ffi::start_server(
                c_endpoint.as_ptr(),
                c_cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                self.threads,
                devices.len(),
                devices.as_mut_ptr(),
            )
        };
        if started.is_none() {
            return Err(RpcServeError::Bind(
                self.endpoint(),
                std::io::Error::other("this build has no RPC backend"),
            ));
        }
        // ggml's server loop only returns when it could not start or accept (it printed why).
        Err(RpcServeError::Bind(
            self.endpoint(),
            std::io::Error::other("the RPC server stopped; see its output above"),
        ))
    }

    fn resolve_devices(&self) -> Result<Vec<sys::ggml_backend_dev_t>, RpcServeError> {
        let all: Vec<(String, sys::ggml_backend_dev_t, sys::ggml_backend_dev_type)> = {
            // SAFETY: registry queries after backend init; names are static strings.
            let n = unsafe { sys::ggml_backend_dev_count() };
            (0..n)
                .map(|i| {
                    // SAFETY: i < count.
                    let dev = unsafe { sys::ggml_backend_dev_get(i) };
                    // SAFETY: dev is registered; the name lives as long as the registry.
                    let name = unsafe { CStr::from_ptr(sys::ggml_backend_dev_name(dev)) };
                    // SAFETY: dev is registered.
                    let kind = unsafe { sys::ggml_backend_dev_type(dev) };
                    (name.to_string_lossy().into_owned(), dev, kind)
                })
                .collect()
        };
        if self.devices.is_empty() {
            // Never re-serve remote devices: that would proxy another server.
            let local = |name: &str| !name.starts_with("RPC");
            let accelerators: Vec<_> = all
                .iter()
                .filter(|(name, _, kind)| {
                    local(name)
                        && (*kind == sys::GGML_BACKEND_DEVICE_TYPE_GPU
                            || *kind == sys::GGML_BACKEND_DEVICE_TYPE_IGPU)
                })
                .map(|(_, dev, _)| *dev)
                .collect();
            if !accelerators.is_empty() {
                return Ok(accelerators);
            }
            return Ok(all
                .iter()
                .filter(|(_, _, kind)| *kind == sys::GGML_BACKEND_DEVICE_TYPE_CPU)
                .map(|(_, dev, _)| *dev)
                .take(1)
                .collect());
        }
        self.devices
            .iter()
            .map(|wanted| {
                all.iter()
                    .find(|(name, _, _)| name.eq_ignore_ascii_case(wanted))
                    .map(|(_, dev, _)| *dev)
                    .ok_or_else(|| RpcServeError::UnknownDevice {
                        name: wanted.clone(),
                        available: all
                            .iter()
                            .map(|(n, _, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            })
            .collect()
    }
}
