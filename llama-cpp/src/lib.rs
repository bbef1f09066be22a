//! Safe Rust bindings to llama.cpp with first-class mixture-of-experts offload.
//!
//! Start with [`Backend::init`], load a [`Model`] with [`ModelParams`], then create a
//! [`Context`] that borrows it. Text goes through the model's [`Vocab`], tokens through
//! a [`Batch`] into [`Context::decode`], and a [`Sampler`] picks the next token;
//! [`generate`] wraps that loop with streaming and statistics.
//!
//! Each operation returns its own error type (a [`model::LoadError`], a
//! [`context::DecodeError`], ...); all of them convert into the crate-wide [`Error`], so
//! a function returning [`Result`] can use `?` on every call. Each error's message says
//! only its own part and leaves the cause to `source()`: print errors with
//! [`ErrorChain`] (or anyhow's `{:#}`) to show the whole chain.
//!
//! # Mixture-of-experts offload
//!
//! Keep the routed experts of the first 20 layers in host RAM, put everything else on
//! the accelerators, and check where the tensors went:
//!
//! ```no_run
//! use llama_cpp_moe::{Backend, Model, ModelParams};
//!
//! let backend = Backend::init();
//! let params = ModelParams::default()
//!     .with_all_gpu_layers() // -ngl all
//!     .with_cpu_moe(20); //     --n-cpu-moe 20
//! let model = Model::load(&backend, "Qwen3-30B-A3B-Q4_0.gguf", &params)?;
//!
//! let placement = model.placement();
//! for (buffer_type, totals) in placement.totals() {
//!     println!("{buffer_type:>24}: {:>4} tensors, {:>6} MiB", totals.count, totals.bytes >> 20);
//! }
//! let experts = placement.experts_on_host();
//! println!("experts in host RAM: {} tensors, {} MiB", experts.count, experts.bytes >> 20);
//! # Ok::<(), llama_cpp_moe::Error>(())
//! ```
//!
//! No model at hand? The companion crate `llama-cpp-moe-gguf`
//! ([`llama_cpp_moe_gguf::synth`]) writes synthetic models with the exact tensor layout
//! of real MoE architectures, from `tiny` up to the public models' `full` size, and
//! reads any GGUF file's metadata and tensor table without loading it.

pub mod adapter;
pub mod backend;
pub mod batch;
pub mod context;
mod error;
mod ffi;
pub mod generate;
pub mod logging;
pub mod model;
pub mod plan;
pub mod quantize;
pub mod routing;
#[cfg(feature = "rpc")]
pub mod rpc;
pub mod sampler;
pub mod system;
pub mod vocab;

pub use backend::{Backend, BufferType, Device, DeviceType, Registry};
pub use batch::{Batch, Output, Pos, SeqId};
pub use context::{Context, ContextParams};
pub use error::{Error, ErrorChain, PathError, Result};
pub use generate::{Completion, GenerateParams, Generation, GenerationStats};
/// The ggml storage type of a tensor, as [`model::TensorPlacement::ggml_type`] reports it.
pub use llama_cpp_moe_gguf::GgmlType;
pub use model::{Model, ModelParams};
pub use sampler::{Sampler, SamplerBuilder};
pub use vocab::{
    apply_chat_template, AddAssistant, AddSpecial, ChatMessage, ParseSpecial, RemoveSpecial,
    RenderSpecial, Token, Utf8Decoder, Vocab,
};

/// Raw bindings, for what this crate does not wrap.
pub use llama_cpp_moe_sys as sys;

/// The llama.cpp this crate was built from (llama and ggml versions, source origin).
pub const LLAMA_CPP_VERSION: &str = llama_cpp_moe_sys::LLAMA_CPP_VERSION;
