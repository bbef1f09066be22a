//! `ContextParams`: sizes and threads of an inference context.

use llama_cpp_moe_sys as sys;

/// How to create a [`crate::Context`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ContextParams {
    pub(crate) n_ctx: u32,
    pub(crate) n_batch: u32,
    pub(crate) n_threads: i32,
    pub(crate) n_threads_batch: i32,
}

impl Default for ContextParams {
    fn default() -> Self {
        // SAFETY: returns a plain struct by value.
        let raw = unsafe { sys::llama_context_default_params() };
        ContextParams {
            n_ctx: raw.n_ctx,
            n_batch: raw.n_batch,
            n_threads: raw.n_threads,
            n_threads_batch: raw.n_threads_batch,
        }
    }
}

impl ContextParams {
    /// Context length in tokens; 0 takes the model's training length.
    ///
    /// C equivalent: `-c N`.
    pub fn with_n_ctx(mut self, n_ctx: u32) -> Self {
        self.n_ctx = n_ctx;
        self
    }

    /// Largest batch that one `decode` call may submit. C equivalent: `-b N`.
    pub fn with_n_batch(mut self, n_batch: u32) -> Self {
        self.n_batch = n_batch;
        self
    }

    /// Threads for generation and for batch (prompt) processing. C equivalent: `-t N`.
    pub fn with_n_threads(mut self, n_threads: i32) -> Self {
        self.n_threads = n_threads;
        self.n_threads_batch = n_threads;
        self
    }

    pub(crate) fn to_raw(&self) -> sys::llama_context_params {
        // SAFETY: returns a plain struct by value.
        let mut raw = unsafe { sys::llama_context_default_params() };
        raw.n_ctx = self.n_ctx;
        raw.n_batch = self.n_batch;
        raw.n_threads = self.n_threads;
        raw.n_threads_batch = self.n_threads_batch;
        raw
    }
}
