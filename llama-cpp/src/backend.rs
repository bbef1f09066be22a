//! Process-wide llama.cpp/ggml initialisation, the device list and buffer types.

use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;

use llama_cpp_moe_sys as sys;

use crate::ffi::string_from_c;

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
            crate::logging::install();
            // SAFETY: no preconditions in the pinned llama.cpp (src/llama.cpp: it starts
            // ggml's timer, fills ggml's f16 tables through one throwaway context and
            // loads the backend modules when none is registered); other calls of ours
            // may precede it (llama_log_set above, llama_model_default_params), as none
            // of them needs it. It must not race with itself (loading modules changes
            // ggml's registry without a lock): OnceLock runs it once per process.
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
                // SAFETY: reg is a live registry (ggml never unregisters one), and its
                // name is a NUL-terminated string that lives as long as the registry.
                let name = unsafe { crate::ffi::string_from_c(sys::ggml_backend_reg_name(reg)) };
                // SAFETY: as above.
                let device_count = unsafe { sys::ggml_backend_reg_dev_count(reg) };
                Some(Registry { name, device_count })
            })
            .collect()
    }

    /// llama.cpp's description of the CPU features and backends it was built with.
    pub fn system_info(&self) -> String {
        // SAFETY: returns a pointer to a static NUL-terminated buffer.
        unsafe { string_from_c(sys::llama_print_system_info()) }
    }

    /// Every device ggml knows, in registry order (CPU, accelerators, then RPC servers
    /// added with `Backend::add_rpc_server`).
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

    /// The CPU device: always there when the backends are linked in; with
    /// `dynamic-backends` only when the CPU module loaded.
    ///
    /// # Errors
    /// [`NoCpuDevice`] when ggml has none (the CPU module was not found or failed to
    /// load), with the backends it did register.
    pub fn cpu_device(&self) -> Result<Device, NoCpuDevice> {
        // SAFETY: registry initialised; plain query.
        let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        NonNull::new(dev)
            .map(|ptr| Device { ptr })
            .ok_or_else(|| NoCpuDevice {
                registries: self.registries().into_iter().map(|r| r.name).collect(),
            })
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
        // SAFETY: registered device; ggml returns NULL or a NUL-terminated name that
        // lives as long as the device.
        unsafe { string_from_c(sys::ggml_backend_dev_name(self.as_ptr())) }
    }

    /// Human-readable description (the GPU model, the CPU brand, or `host:port`).
    pub fn description(&self) -> String {
        // SAFETY: as in `name`.
        unsafe { string_from_c(sys::ggml_backend_dev_description(self.as_ptr())) }
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
        // SAFETY: a live buffer type; its name is NULL or a NUL-terminated string that
        // lives as long as the buffer type.
        unsafe { string_from_c(sys::ggml_backend_buft_name(self.as_ptr())) }
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

/// The name ([`BufferType::name`]): what llama.cpp prints and `-ot` accepts.
impl fmt::Display for BufferType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.name())
    }
}

/// ggml has no CPU device: with `dynamic-backends` the CPU backend is a module loaded at
/// run time (`libggml-cpu-*.so` from the build's backend directory), and it was not
/// found or did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ggml has no CPU device: the CPU backend module was not found or failed to load \
     (backends registered: {})",
    if registries.is_empty() { "none".to_owned() } else { registries.join(", ") }
)]
#[non_exhaustive]
pub struct NoCpuDevice {
    /// The backends ggml did register (`"RPC"`, `"CUDA"`, ...).
    pub registries: Vec<String>,
}

/// A buffer-type name that no device provides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("unknown buffer type {name:?}; available: {}", available.join(", "))]
pub struct UnknownBufferType {
    /// The name that was asked for.
    pub name: String,
    /// The names that exist.
    pub available: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The missing CPU module is an error that says what is missing and what did
    /// load, not a panic (`cpu_device` used to `expect` the device).
    #[test]
    fn no_cpu_device_names_the_module_and_the_backends_that_loaded() {
        let some = NoCpuDevice {
            registries: vec!["RPC".into(), "CUDA".into()],
        }
        .to_string();
        assert!(some.contains("CPU backend module"), "{some}");
        assert!(some.ends_with("(backends registered: RPC, CUDA)"), "{some}");
        let none = NoCpuDevice { registries: vec![] }.to_string();
        assert!(none.ends_with("(backends registered: none)"), "{none}");
    }

    #[test]
    fn this_build_has_a_cpu_device() {
        let backend = Backend::init();
        let cpu = backend
            .cpu_device()
            .expect("the CPU backend is linked or loaded");
        assert_eq!(cpu.device_type(), DeviceType::Cpu);
    }
}
