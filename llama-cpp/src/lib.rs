//! Safe Rust bindings to llama.cpp with first-class mixture-of-experts offload.
//!
//! Start with [`Backend::init`], load a [`Model`] with [`ModelParams`], then create a
//! [`Context`] that borrows it.

mod backend;
pub mod context;
pub mod gguf;
pub mod log;
pub mod model;

pub use backend::Backend;
pub use context::{Context, ContextParams};
pub use model::{Model, ModelParams};

/// Raw bindings, for what this crate does not wrap.
pub use llama_cpp_moe_sys as sys;

/// The llama.cpp this crate was built from (llama and ggml versions, source origin).
pub const LLAMA_CPP_VERSION: &str = llama_cpp_moe_sys::LLAMA_CPP_VERSION;
