//! Process-wide llama.cpp/ggml initialisation and the device list.

use std::ffi::CStr;
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

    /// llama.cpp's description of the CPU features and backends it was built with.
    pub fn system_info(&self) -> String {
        // SAFETY: returns a pointer to a static NUL-terminated buffer.
        unsafe { CStr::from_ptr(sys::llama_print_system_info()) }
            .to_string_lossy()
            .into_owned()
    }
}
