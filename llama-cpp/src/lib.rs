//! Safe Rust bindings to llama.cpp with first-class mixture-of-experts offload.
//!
//! The API arrives in stages; for now this crate re-exports the version of the
//! llama.cpp it was built against.

/// The llama.cpp this crate was built from (llama and ggml versions, source origin).
pub const LLAMA_CPP_VERSION: &str = llama_cpp_moe_sys::LLAMA_CPP_VERSION;

pub mod gguf;
