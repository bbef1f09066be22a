//! The server side: this machine's devices, served to other processes.

use std::ffi::CString;
use std::net::IpAddr;
use std::path::PathBuf;

use llama_cpp_moe_sys as sys;

use super::entry_points;
use crate::error::PathError;
use crate::ffi::path_to_cstring;
use crate::{Backend, Device, DeviceType};

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
    #[error("invalid cache directory: {0}")]
    InvalidCacheDir(PathError),
    /// The address cannot be bound (the port is taken, or the address is not this
    /// machine's).
    #[error("cannot bind {endpoint}")]
    Bind {
        /// The `host:port` endpoint.
        endpoint: String,
        /// Why the OS refused it.
        source: std::io::Error,
    },
    /// This build has no RPC backend to serve with (with `dynamic-backends`: no RPC
    /// module was loaded).
    #[error("this build has no ggml RPC backend")]
    NoRpcBackend,
    /// ggml's server loop returned: it could not start or stopped accepting clients
    /// (it prints why on stderr).
    #[error("the RPC server on {0} stopped; see its output above")]
    Stopped(String),
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
    pub fn serve(self, backend: &Backend) -> Result<std::convert::Infallible, RpcServeError> {
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
            std::net::TcpListener::bind((ip, self.port)).map_err(|source| RpcServeError::Bind {
                endpoint: endpoint.clone(),
                source,
            })?,
        );
        let mut devices: Vec<sys::ggml_backend_dev_t> = self
            .resolve_devices(backend)?
            .iter()
            .map(Device::as_ptr)
            .collect();
        let c_endpoint = CString::new(endpoint).expect("an IP endpoint has no NUL byte");
        let c_cache = match &self.cache_dir {
            Some(dir) => Some(path_to_cstring(dir).map_err(RpcServeError::InvalidCacheDir)?),
            None => None,
        };
        // SAFETY: the strings and the device array outlive the call, which never returns
        // normally; the devices come from ggml's registry and live for the process.
        let started = unsafe {
            entry_points::start_server(
                c_endpoint.as_ptr(),
                c_cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                self.threads,
                devices.len(),
                devices.as_mut_ptr(),
            )
        };
        if started.is_none() {
            return Err(RpcServeError::NoRpcBackend);
        }
        // ggml's server loop only returns when it could not start or accept (it printed why).
        Err(RpcServeError::Stopped(self.endpoint()))
    }

    /// The devices to serve: the ones named, or by default every local accelerator, or
    /// the CPU when there is none.
    fn resolve_devices(&self, backend: &Backend) -> Result<Vec<Device>, RpcServeError> {
        let all = backend.devices();
        if self.devices.is_empty() {
            // Never re-serve remote devices: that would proxy another server.
            let accelerators: Vec<Device> = all
                .iter()
                .filter(|dev| {
                    !dev.name().starts_with("RPC")
                        && matches!(
                            dev.device_type(),
                            DeviceType::Gpu | DeviceType::IntegratedGpu
                        )
                })
                .copied()
                .collect();
            if !accelerators.is_empty() {
                return Ok(accelerators);
            }
            return Ok(all
                .iter()
                .filter(|dev| dev.device_type() == DeviceType::Cpu)
                .take(1)
                .copied()
                .collect());
        }
        self.devices
            .iter()
            .map(|wanted| {
                all.iter()
                    .find(|dev| dev.name().eq_ignore_ascii_case(wanted))
                    .copied()
                    .ok_or_else(|| RpcServeError::UnknownDevice {
                        name: wanted.clone(),
                        available: all.iter().map(Device::name).collect::<Vec<_>>().join(", "),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_taken_port_is_a_bind_error_whose_source_is_the_os_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = RpcServerConfig::new("127.0.0.1", port)
            .device("CPU")
            .serve(&Backend::init())
            .unwrap_err();
        let RpcServeError::Bind { endpoint, source } = &err else {
            panic!("expected Bind, got {err:?}");
        };
        assert_eq!(*endpoint, format!("127.0.0.1:{port}"));
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}");
        assert_eq!(err.to_string(), format!("cannot bind 127.0.0.1:{port}"));
        let cause = err.source().expect("the OS error is the source");
        assert!(
            cause.downcast_ref::<std::io::Error>().is_some(),
            "{cause:?}"
        );
    }
}
