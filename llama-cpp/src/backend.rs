//! Process-wide llama.cpp/ggml initialisation, the device list and buffer types.

use std::ffi::{c_char, CStr};
use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;

use llama_cpp_moe_sys as sys;

/// Proof that llama.cpp's backends are initialised; needed to load models.
///
/// ggml keeps one backend registry per process, so initialisation happens once, on the
/// first [`Backend::init`], and is never undone: `llama_backend_free` would tear down
/// state that any live model or context (in any thread) still uses, so this handle
/// cannot free it. Cloning is free.
#[derive(Debug, Clone)]
pub struct Backend {
    _private: (),
}

static INIT: OnceLock<()> = OnceLock::new();

impl Backend {
    /// Initialises llama.cpp once per process (later calls are cheap) and installs the
    /// log hook that routes llama.cpp's messages to the `log` crate.
    ///
    /// C equivalent: `llama_backend_init()` (plus `ggml_backend_load_all()` when the
    /// backends are runtime modules).
    pub fn init() -> Backend {
        INIT.get_or_init(|| {
            crate::log::install();
            // SAFETY: runs once per process before any other llama.cpp call of ours.
            unsafe { sys::llama_backend_init() };
            #[cfg(feature = "dynamic-backends")]
            // SAFETY: loads backend modules from the paths ggml knows; no preconditions.
            unsafe {
                sys::ggml_backend_load_all()
            };
        });
        Backend { _private: () }
    }

    /// Every backend ggml has registered (compiled in, or loaded as a module), with
    /// the number of devices each found. A backend with no device is how a build with
    /// CUDA reports a machine without an NVIDIA GPU or driver: ggml logs why and carries
    /// on with the CPU.
    ///
    /// C equivalent: `ggml_backend_reg_count()` / `ggml_backend_reg_get(i)`.
    pub fn registries(&self) -> Vec<Registry> {
        // SAFETY: the registry is initialised (we hold a Backend); plain query.
        let n = unsafe { sys::ggml_backend_reg_count() };
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < ggml_backend_reg_count().
                let reg = unsafe { sys::ggml_backend_reg_get(i) };
                if reg.is_null() {
                    return None;
                }
                // SAFETY: reg is a live registry (ggml never unregisters one).
                let name = c_str_lossy(unsafe { sys::ggml_backend_reg_name(reg) });
                // SAFETY: as above.
                let device_count = unsafe { sys::ggml_backend_reg_dev_count(reg) };
                Some(Registry { name, device_count })
            })
            .collect()
    }

    /// llama.cpp's description of the CPU features and backends it was built with.
    pub fn system_info(&self) -> String {
        // SAFETY: returns a pointer to a static NUL-terminated buffer.
        unsafe { CStr::from_ptr(sys::llama_print_system_info()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Every device ggml knows, in registry order (CPU, accelerators, then RPC servers
    /// added with [`Backend::add_rpc_server`]).
    ///
    /// C equivalent: `ggml_backend_dev_count()` / `ggml_backend_dev_get(i)`;
    /// `llama-cli --list-devices`.
    pub fn devices(&self) -> Vec<Device> {
        // SAFETY: the registry is initialised (we hold a Backend); plain query.
        let n = unsafe { sys::ggml_backend_dev_count() };
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < ggml_backend_dev_count().
                let dev = unsafe { sys::ggml_backend_dev_get(i) };
                NonNull::new(dev).map(|ptr| Device { ptr })
            })
            .collect()
    }

    /// The CPU device (always present).
    pub fn cpu_device(&self) -> Device {
        // SAFETY: registry initialised; plain query.
        let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        Device {
            ptr: NonNull::new(dev).expect("ggml always registers a CPU device"),
        }
    }

    /// The first device whose name is `name` (e.g. `"CPU"`, `"CUDA0"`, `"RPC0"`).
    pub fn device_by_name(&self, name: &str) -> Option<Device> {
        self.devices().into_iter().find(|d| d.name() == name)
    }

    /// Every buffer type a tensor override can name, as llama.cpp's `-ot` parser lists
    /// them: the default buffer type of each device (`"CPU"`, `"CUDA0"`,
    /// `"RPC0[host:port]"`, ...). Sorted by name, without duplicates.
    pub fn buffer_types(&self) -> Vec<BufferType> {
        let mut out: Vec<BufferType> = self
            .devices()
            .iter()
            .filter_map(Device::buffer_type)
            .collect();
        out.sort_by_key(|b| b.name());
        out.dedup_by_key(|b| b.name());
        out
    }

    /// Resolves a buffer-type name the way llama.cpp's `-ot PATTERN=NAME` does.
    ///
    /// # Errors
    /// [`UnknownBufferType`], which lists the names that exist.
    pub fn buffer_type_by_name(&self, name: &str) -> Result<BufferType, UnknownBufferType> {
        let all = self.buffer_types();
        all.iter()
            .find(|b| b.name() == name)
            .copied()
            .ok_or_else(|| UnknownBufferType {
                name: name.to_owned(),
                available: all.iter().map(BufferType::name).collect(),
            })
    }

    /// Adds the devices of a ggml RPC server (`host:port`, as started by `rpc-server`
    /// or [`sys::ggml_backend_rpc_start_server`]) to the registry, so models can offload
    /// to it like to a local GPU. Adding the same endpoint again returns its devices
    /// without registering them twice.
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
    #[cfg(feature = "rpc")]
    pub fn add_rpc_server(&self, endpoint: &str) -> Result<Vec<Device>, RpcError> {
        rpc::add_server(endpoint)
    }
}

/// A ggml device: the CPU, a GPU, an accelerator or a remote RPC device.
///
/// Devices are owned by ggml's process-global registry and are never freed, so this
/// handle is a plain copyable reference to one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    ptr: NonNull<sys::ggml_backend_device>,
}

// SAFETY: devices live in ggml's process-wide registry for the life of the process and
// their query functions (name, description, type, memory) take no per-thread state;
// llama.cpp itself shares them between all models and contexts in every thread.
unsafe impl Send for Device {}
// SAFETY: see Send; every &self method is a read-only registry query.
unsafe impl Sync for Device {}

/// What kind of hardware a [`Device`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceType {
    /// The host CPU.
    Cpu,
    /// A discrete GPU, or a remote RPC device (ggml reports RPC devices as GPUs).
    Gpu,
    /// An integrated GPU sharing host memory.
    IntegratedGpu,
    /// An accelerator used alongside the CPU (e.g. BLAS, AMX).
    Accelerator,
    /// A meta device spanning several devices (tensor parallelism).
    Meta,
    /// A type this crate does not know yet (the raw value).
    Other(u32),
}

/// A backend registered with ggml (see [`Backend::registries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registry {
    /// The backend's name: `"CPU"`, `"CUDA"`, `"RPC"`, `"Vulkan"`, ...
    pub name: String,
    /// How many devices it found (0: built in, but nothing to drive here).
    pub device_count: usize,
}

fn c_str_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the object.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Device {
    /// Wraps a raw device pointer obtained from ggml's registry.
    ///
    /// # Safety
    /// `ptr` must be a device registered with ggml (it then lives until process exit).
    pub unsafe fn from_raw(ptr: NonNull<sys::ggml_backend_device>) -> Device {
        Device { ptr }
    }

    /// The raw pointer, for calls this crate does not wrap.
    pub fn as_ptr(&self) -> sys::ggml_backend_dev_t {
        self.ptr.as_ptr()
    }

    /// Short name, e.g. `"CPU"`, `"CUDA0"`, `"RPC0"`.
    pub fn name(&self) -> String {
        // SAFETY: registered device.
        c_str_lossy(unsafe { sys::ggml_backend_dev_name(self.as_ptr()) })
    }

    /// Human-readable description (the GPU model, the CPU brand, or `host:port`).
    pub fn description(&self) -> String {
        // SAFETY: registered device.
        c_str_lossy(unsafe { sys::ggml_backend_dev_description(self.as_ptr()) })
    }

    /// The kind of device.
    pub fn device_type(&self) -> DeviceType {
        // SAFETY: registered device.
        match unsafe { sys::ggml_backend_dev_type(self.as_ptr()) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceType::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceType::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceType::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceType::Accelerator,
            sys::GGML_BACKEND_DEVICE_TYPE_META => DeviceType::Meta,
            other => DeviceType::Other(other),
        }
    }

    /// `(free, total)` memory in bytes, as the device reports it now.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: registered device; the out-pointers are valid for the call.
        unsafe { sys::ggml_backend_dev_memory(self.as_ptr(), &mut free, &mut total) };
        (free, total)
    }

    /// The device's default buffer type (where its weights go), if it has one.
    pub fn buffer_type(&self) -> Option<BufferType> {
        // SAFETY: registered device.
        let buft = unsafe { sys::ggml_backend_dev_buffer_type(self.as_ptr()) };
        NonNull::new(buft).map(|ptr| BufferType { ptr })
    }

    /// The device's pinned host buffer type (e.g. `"CUDA_Host"`), if it has one.
    pub fn host_buffer_type(&self) -> Option<BufferType> {
        // SAFETY: registered device.
        let buft = unsafe { sys::ggml_backend_dev_host_buffer_type(self.as_ptr()) };
        NonNull::new(buft).map(|ptr| BufferType { ptr })
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name())
            .field("description", &self.description())
            .field("type", &self.device_type())
            .finish()
    }
}

/// A ggml buffer type: where a tensor's memory is allocated (`"CPU"`, `"CUDA0"`,
/// `"CUDA_Host"`, `"RPC0[127.0.0.1:50052]"`, ...).
///
/// Buffer types are static objects owned by their backend for the life of the process,
/// so this is a plain copyable reference.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferType {
    ptr: NonNull<sys::ggml_backend_buffer_type>,
}

// SAFETY: ggml buffer types are immutable process-global objects (static or
// registry-owned, never freed); llama.cpp's own `-ot` parser keeps them in static maps
// used from any thread.
unsafe impl Send for BufferType {}
// SAFETY: see Send; the &self methods only read the name and flags.
unsafe impl Sync for BufferType {}

impl BufferType {
    /// The CPU's default buffer type, the target of `--cpu-moe` / `--n-cpu-moe`.
    pub fn cpu(_backend: &Backend) -> BufferType {
        // SAFETY: returns ggml's static CPU buffer type.
        let buft = unsafe { sys::ggml_backend_cpu_buffer_type() };
        BufferType {
            ptr: NonNull::new(buft).expect("ggml's CPU buffer type is static"),
        }
    }

    /// Wraps a raw buffer type.
    ///
    /// # Safety
    /// `ptr` must be a ggml buffer type that lives until process exit (all buffer types
    /// that backends hand out do).
    pub unsafe fn from_raw(ptr: NonNull<sys::ggml_backend_buffer_type>) -> BufferType {
        BufferType { ptr }
    }

    /// The raw pointer.
    pub fn as_ptr(&self) -> sys::ggml_backend_buffer_type_t {
        self.ptr.as_ptr()
    }

    /// The name llama.cpp prints and `-ot` accepts.
    pub fn name(&self) -> String {
        // SAFETY: a live buffer type.
        c_str_lossy(unsafe { sys::ggml_backend_buft_name(self.as_ptr()) })
    }

    /// The device that owns this buffer type, if ggml knows it.
    pub fn device(&self) -> Option<Device> {
        // SAFETY: a live buffer type.
        let dev = unsafe { sys::ggml_backend_buft_get_device(self.as_ptr()) };
        NonNull::new(dev).map(|ptr| Device { ptr })
    }

    /// Whether its memory is ordinary host memory the CPU can read in ggml's layout
    /// (`false` for repacked CPU types such as `CPU_REPACK`).
    pub fn is_host(&self) -> bool {
        // SAFETY: a live buffer type.
        unsafe { sys::ggml_backend_buft_is_host(self.as_ptr()) }
    }
}

impl fmt::Debug for BufferType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BufferType").field(&self.name()).finish()
    }
}

/// A buffer-type name that no device provides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown buffer type {name:?}; available: {}", available.join(", "))]
pub struct UnknownBufferType {
    /// The name that was asked for.
    pub name: String,
    /// The names that exist.
    pub available: Vec<String>,
}

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

#[cfg(feature = "rpc")]
mod rpc {
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::ptr::NonNull;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::{Device, RpcError};
    use llama_cpp_moe_sys as sys;

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Endpoints already registered, with the address of their ggml registry; ggml must
    /// see each registry registered exactly once or its devices appear twice.
    static REGISTERED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

    /// Splits like ggml's `parse_endpoint` (at the first ':'), but strictly: a
    /// non-empty host and a port that is a whole u16.
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
                // The server handles one client at a time and goes back to accept()
                // when this probe disconnects without a HELLO.
                Ok(_stream) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    fn devices_of(reg: sys::ggml_backend_reg_t) -> Vec<Device> {
        // SAFETY: reg is a live RPC registry.
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < count.
                let dev = unsafe { sys::ggml_backend_reg_dev_get(reg, i) };
                NonNull::new(dev).map(|ptr| Device { ptr })
            })
            .collect()
    }

    pub(super) fn add_server(endpoint: &str) -> Result<Vec<Device>, RpcError> {
        let (host, port) =
            parse(endpoint).ok_or_else(|| RpcError::BadEndpoint(endpoint.to_owned()))?;
        let mut guard = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        let registered = guard.get_or_insert_with(HashMap::new);
        if let Some(&reg) = registered.get(endpoint) {
            return Ok(devices_of(reg as sys::ggml_backend_reg_t));
        }
        probe(endpoint, host, port)?;
        let c_endpoint =
            CString::new(endpoint).map_err(|_| RpcError::BadEndpoint(endpoint.to_owned()))?;
        crate::log::clear_last_error();
        // SAFETY: NUL-terminated endpoint; the server accepted a connection just now, so
        // ggml's connect (which aborts on failure) is expected to succeed.
        let reg = unsafe { crate::rpc_ffi::add_server(c_endpoint.as_ptr()) }.ok_or_else(|| {
            RpcError::Failed(format!("{endpoint} (this build has no RPC backend)"))
        })?;
        if reg.is_null() {
            return Err(RpcError::Failed(endpoint.to_owned()));
        }
        // SAFETY: a new RPC registry, registered once (guarded by REGISTERED).
        unsafe { sys::ggml_backend_register(reg) };
        registered.insert(endpoint.to_owned(), reg as usize);
        Ok(devices_of(reg))
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
}
