//! GGUF files: a reader over ggml's own parser ([`GgufFile`]), a streaming writer
//! ([`GgufWriter`]), and the synthetic model factory ([`synth`]).
//!
//! ```no_run
//! use llama_cpp_moe::gguf::{GgufFile, TensorKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let f = GgufFile::open("model.gguf")?;
//! println!("{:?}: {:?} layers, {:?} experts", f.architecture(), f.block_count(), f.expert_count());
//! for layer in f.bytes_by_layer() {
//!     println!("{:?}: {} expert bytes", layer.layer, layer.bytes(TensorKind::RoutedExpert));
//! }
//! # Ok(())
//! # }
//! ```

mod classify;
mod error;
mod reader;
mod types;
mod validate;
mod value;
mod writer;

pub mod synth;

pub use classify::{is_routed_expert, LayerBytes, TensorKind};
pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue};
pub use writer::{GgufWriter, TensorDesc, WriteError, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
