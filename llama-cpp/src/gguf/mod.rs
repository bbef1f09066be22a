//! GGUF files: a reader over ggml's own parser, a streaming writer, and the synthetic
//! model factory ([`synth`]).

mod types;
mod value;
mod writer;

pub mod synth;

pub use types::GgmlType;
pub use value::{MetaArray, MetaValue};
pub use writer::{GgufWriter, TensorDesc, WriteError, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
