//! Safe Rust bindings to llama.cpp with first-class mixture-of-experts offload.
//!
//! Start with [`Backend::init`], load a [`Model`] with [`ModelParams`], then create a
//! [`Context`] that borrows it. Text goes through the model's [`Vocab`], tokens through
//! a [`Batch`] into [`Context::decode`], and a [`Sampler`] picks the next token;
//! [`generate`] wraps that loop with streaming and statistics.

pub mod backend;
pub mod batch;
pub mod context;
pub mod generate;
pub mod gguf;
pub mod log;
pub mod model;
#[cfg(feature = "rpc")]
pub mod rpc;
pub mod sampler;
pub mod vocab;

pub use backend::{Backend, BufferType, Device, DeviceType};
pub use batch::{Batch, Pos, SeqId};
pub use context::{Context, ContextParams};
pub use generate::{Completion, GenerateParams, Generation, GenerationStats};
pub use model::{Model, ModelParams};
pub use sampler::{Sampler, SamplerBuilder};
pub use vocab::{apply_chat_template, ChatMessage, Token, Utf8Decoder, Vocab};

/// Raw bindings, for what this crate does not wrap.
pub use llama_cpp_moe_sys as sys;

/// The llama.cpp this crate was built from (llama and ggml versions, source origin).
pub const LLAMA_CPP_VERSION: &str = llama_cpp_moe_sys::LLAMA_CPP_VERSION;
