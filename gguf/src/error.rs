//! Errors of the GGUF reader.

use std::io;
use std::path::PathBuf;

/// Why a GGUF file could not be opened. Every malformed input ends here, never in a
/// panic or an abort: the parser bounds every read by the file's size.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// Reading the file failed.
    #[error("reading {}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file does not start with the GGUF magic.
    #[error("{}: not a GGUF file (starts with {magic:02x?})", path.display())]
    NotGguf {
        /// The path given.
        path: PathBuf,
        /// The first bytes found (up to 4).
        magic: Vec<u8>,
    },
    /// The file ends inside the header, the metadata or the tensor table.
    #[error("{}: truncated: file ends at byte {file_size} while reading {what} at byte {offset}", path.display())]
    Truncated {
        /// The path given.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// What was being read.
        what: &'static str,
        /// The file's size.
        file_size: u64,
    },
    /// A GGUF version ggml cannot read (it reads 2 and 3).
    #[error("{}: GGUF version {version} is not supported (2 and 3 are)", path.display())]
    UnsupportedVersion {
        /// The path given.
        path: PathBuf,
        /// The version in the header.
        version: u32,
    },
    /// A structural error in the header, metadata or tensor table.
    #[error("{}: malformed GGUF at byte {offset}: {what}", path.display())]
    Malformed {
        /// The path given.
        path: PathBuf,
        /// Where the bad field starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A tensor has a type id ggml does not know.
    #[error("{}: tensor {tensor:?} has unknown ggml type {type_id} (at byte {offset})", path.display())]
    UnknownTensorType {
        /// The path given.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type id found.
        type_id: u32,
        /// Where the type field starts.
        offset: u64,
    },
    /// A tensor's data offset is not where its data must be: ggml stores tensors back to
    /// back (each padded to the alignment), in table order.
    #[error("{}: tensor {tensor:?} claims data offset {offset}, expected {expected} (at byte {at})", path.display())]
    TensorOffsetMismatch {
        /// The path given.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The offset in the table, relative to the data section.
        offset: u64,
        /// Where its data must start, relative to the data section.
        expected: u64,
        /// Where its table entry starts.
        at: u64,
    },
    /// A tensor's data extends past the end of the file.
    #[error("{}: tensor {name:?} data [{start}, {end}) lies outside the file ({file_size} bytes)", path.display())]
    TensorDataOutOfBounds {
        /// The path given.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// First byte of its data.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A tensor is named for a block the model does not have (`blk.N.*` with `N` at or
    /// above `{arch}.block_count`); found by [`crate::GgufFile::bytes_by_layer`].
    #[error(
        "{}: tensor {tensor:?} is in block {block}, but the model has {block_count} blocks",
        path.display()
    )]
    BlockOutOfRange {
        /// The path given.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The block index in its name.
        block: u32,
        /// The file's `{arch}.block_count`.
        block_count: u64,
    },
}
