//! Loaded models.

mod params;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

pub use params::ModelParams;

use crate::Backend;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist.
    #[error("model file not found: {0}")]
    NotFound(PathBuf),
    /// The path contains a NUL byte, which C cannot represent.
    #[error("model path contains a NUL byte: {0:?}")]
    NulInPath(PathBuf),
    /// llama.cpp refused the file; `reason` is its own error line when it logged one.
    #[error("llama.cpp failed to load {path}: {reason}")]
    Failed {
        /// The file that failed.
        path: PathBuf,
        /// llama.cpp's last error line, or a generic message.
        reason: String,
    },
}

/// A model loaded by llama.cpp. Contexts borrow it: see [`crate::Context`].
#[derive(Debug)]
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: llama.cpp treats a loaded llama_model as immutable; contexts only read its
// weights and vocab, and llama-server shares one model across threads the same way.
unsafe impl Send for Model {}
// SAFETY: every &self method only reads the model through llama.cpp's const accessors.
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) };
    }
}

/// A path as C bytes: raw OS bytes on Unix, so non-UTF-8 paths work.
pub(crate) fn path_to_cstring(path: &Path) -> Option<CString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes()).ok()
    }
    #[cfg(not(unix))]
    {
        CString::new(path.to_string_lossy().as_bytes()).ok()
    }
}

impl Model {
    /// Loads a GGUF model.
    ///
    /// C equivalent: `llama_model_load_from_file(path, params)`.
    pub fn load(
        _backend: &Backend,
        path: impl AsRef<Path>,
        params: &ModelParams,
    ) -> Result<Model, LoadError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(LoadError::NotFound(path.to_owned()));
        }
        let c_path = path_to_cstring(path).ok_or_else(|| LoadError::NulInPath(path.to_owned()))?;
        let raw = params.to_raw();
        crate::log::clear_last_error();
        // SAFETY: c_path is NUL-terminated; raw.raw's pointers borrow from `params`, which
        // outlives this call; llama.cpp copies what it keeps.
        let ptr = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), raw.raw) };
        let reason = crate::log::take_last_error();
        let ptr = NonNull::new(ptr).ok_or_else(|| LoadError::Failed {
            path: path.to_owned(),
            reason: reason.unwrap_or_else(|| "llama_model_load_from_file returned NULL".into()),
        })?;
        Ok(Model { ptr })
    }

    /// The raw pointer, for calls this crate does not wrap yet. Valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// Number of transformer layers.
    pub fn n_layer(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Experts per MoE layer (0 for a dense model).
    pub fn n_expert(&self) -> u32 {
        // SAFETY: valid model pointer; the shim catches C++ exceptions.
        unsafe { sys::llama_moe_model_n_expert(self.ptr.as_ptr()) }.max(0) as u32
    }
}
