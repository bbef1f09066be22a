//! `ModelParams`: how a model is loaded and where its tensors go.

use llama_cpp_moe_sys as sys;

/// How to load a model: layers to offload, memory mapping, and tensor placement.
///
/// The params own everything the raw `llama_model_params` points to; the raw struct is
/// built only for the duration of [`crate::Model::load`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ModelParams {
    pub(crate) n_gpu_layers: i32,
    pub(crate) vocab_only: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        // SAFETY: returns a plain struct by value.
        let raw = unsafe { sys::llama_model_default_params() };
        ModelParams {
            n_gpu_layers: raw.n_gpu_layers,
            vocab_only: raw.vocab_only,
        }
    }
}

impl ModelParams {
    /// Number of layers to store on accelerators; negative means all.
    ///
    /// C equivalent: `-ngl N`.
    pub fn with_n_gpu_layers(mut self, n: i32) -> Self {
        self.n_gpu_layers = n;
        self
    }

    /// Load only the vocabulary, no weights.
    pub fn with_vocab_only(mut self, vocab_only: bool) -> Self {
        self.vocab_only = vocab_only;
        self
    }

    /// Number of layers to store on accelerators (negative: all).
    pub fn n_gpu_layers(&self) -> i32 {
        self.n_gpu_layers
    }

    /// Builds the raw struct. Pointers in it borrow from `self`, hence the lifetime.
    pub(crate) fn to_raw(&self) -> RawModelParams<'_> {
        // SAFETY: returns a plain struct by value.
        let mut raw = unsafe { sys::llama_model_default_params() };
        raw.n_gpu_layers = self.n_gpu_layers;
        raw.vocab_only = self.vocab_only;
        RawModelParams {
            raw,
            _owner: std::marker::PhantomData,
        }
    }
}

/// A `llama_model_params` whose pointers borrow from the [`ModelParams`] it came from.
pub(crate) struct RawModelParams<'a> {
    pub(crate) raw: sys::llama_model_params,
    _owner: std::marker::PhantomData<&'a ModelParams>,
}
