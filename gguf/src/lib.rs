//! GGUF files in pure Rust: a reader ([`GgufFile`]), a streaming writer ([`GgufWriter`]),
//! ggml's tensor type table ([`GgmlType`]), reference quantisers ([`quant`]) and the
//! synthetic MoE model factory ([`synth`]).
//!
//! This crate needs no C library: it is what the `llama-cpp-moe` bindings use to tell
//! routed-expert tensors from the rest, and what tests, examples and benchmarks use to
//! inspect model files and to make small models with the exact tensor layout of real
//! MoE architectures.
//!
//! ```no_run
//! use llama_cpp_moe_gguf::{GgufFile, TensorKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let f = GgufFile::open("model.gguf")?;
//! println!("{:?}: {:?} layers, {:?} experts", f.architecture(), f.block_count(), f.expert_count());
//! for layer in f.bytes_by_layer()? {
//!     println!("{:?}: {} expert bytes", layer.layer, layer.bytes(TensorKind::RoutedExpert));
//! }
//! # Ok(())
//! # }
//! ```

mod classify;
mod error;
mod parse;
pub mod prune;
mod reader;
mod types;
mod value;
mod writer;

pub mod quant;
pub mod synth;

pub use classify::{is_routed_expert, LayerBytes, TensorKind};
pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue};
pub use writer::{GgufWriter, TensorDesc, WriteError, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
