//! Inference contexts: KV cache, compute buffers, decoding.

mod params;

use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

pub use params::ContextParams;

use crate::Model;

/// Why a context could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// llama.cpp returned NULL; `reason` is its last error line when it logged one.
    #[error("llama.cpp could not create a context: {reason}")]
    Failed {
        /// llama.cpp's last error line, or a generic message.
        reason: String,
    },
}

/// An inference context over a borrowed [`Model`].
///
/// ```compile_fail
/// use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
/// let backend = Backend::init();
/// let ctx: Context<'_>;
/// {
///     let model = Model::load(&backend, "m.gguf", &ModelParams::default()).unwrap();
///     ctx = Context::new(&model, &ContextParams::default()).unwrap();
/// } // error: `model` does not live long enough
/// drop(ctx);
/// ```
#[derive(Debug)]
pub struct Context<'model> {
    ptr: NonNull<sys::llama_context>,
    model: &'model Model,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: a llama_context may move between threads (llama-server hands contexts to
// worker threads); it is not Sync because decode mutates it without locking.
unsafe impl Send for Context<'_> {}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_init_from_model and is freed once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) };
    }
}

impl<'model> Context<'model> {
    /// Creates a context. C equivalent: `llama_init_from_model(model, params)`.
    pub fn new(model: &'model Model, params: &ContextParams) -> Result<Self, ContextError> {
        crate::log::clear_last_error();
        // SAFETY: the model pointer is valid for 'model; params is a plain struct.
        let ptr = unsafe { sys::llama_init_from_model(model.as_ptr(), params.to_raw()) };
        let reason = crate::log::take_last_error();
        let ptr = NonNull::new(ptr).ok_or_else(|| ContextError::Failed {
            reason: reason.unwrap_or_else(|| "llama_init_from_model returned NULL".into()),
        })?;
        Ok(Context {
            ptr,
            model,
            _not_sync: PhantomData,
        })
    }

    /// The model this context runs.
    pub fn model(&self) -> &'model Model {
        self.model
    }

    /// The raw pointer, for calls this crate does not wrap yet. Valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// Context length in tokens.
    pub fn n_ctx(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) }
    }
}
