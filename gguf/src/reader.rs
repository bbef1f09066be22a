//! [`GgufFile`]: metadata and tensor table of a GGUF file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::classify::{LayerBytes, TensorKind};
use crate::error::GgufError;
use crate::parse::parse;
use crate::types::GgmlType;
use crate::value::MetaValue;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.3.ffn_down_exps.weight`.
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// ggml shape with trailing 1s dropped (like `ggml_n_dims`), `shape[0]` fastest.
    pub shape: Vec<u64>,
    /// Bytes of data (`ggml_nbytes`).
    pub n_bytes: u64,
    /// Absolute file offset of the data.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// What the tensor is (routed expert, attention, ...), from its name.
    pub fn kind(&self) -> TensorKind {
        TensorKind::of(&self.name)
    }

    /// The block (`blk.N.`) the tensor belongs to, if any.
    pub fn layer(&self) -> Option<u32> {
        crate::classify::layer_of(&self.name)
    }
}

/// A parsed GGUF file: metadata and tensor table, without tensor data.
///
/// Opening reads only the header region; a 60 GB model opens in milliseconds.
#[derive(Clone, Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    data_offset: u64,
    file_size: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
}

impl GgufFile {
    /// Opens `path` and reads its metadata and tensor table (never the tensor data).
    ///
    /// The parse applies every check of ggml's own `gguf_init_from_file`, plus one it
    /// lacks (tensor data must lie inside the file), so a damaged file gives a
    /// [`GgufError`] here instead of an abort later in llama.cpp's loader.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GgufError::NotFound {
                path: path.to_owned(),
            },
            _ => GgufError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let file_size = file
            .metadata()
            .map_err(|e| GgufError::Io {
                path: path.to_owned(),
                source: e,
            })?
            .len();
        let parsed = parse(path, file, file_size)?;
        Ok(Self {
            path: path.to_owned(),
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            file_size,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset where tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// File size in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// All metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")?.as_str()
    }

    /// An integer `{arch}.{suffix}` entry, e.g. `arch_u64("expert_count")`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        self.get(&format!("{}.{suffix}", self.architecture()?))?
            .as_u64()
    }

    /// A float `{arch}.{suffix}` entry, e.g. `arch_f64("rope.freq_base")`.
    pub fn arch_f64(&self, suffix: &str) -> Option<f64> {
        self.get(&format!("{}.{suffix}", self.architecture()?))?
            .as_f64()
    }

    /// `{arch}.block_count`: transformer layers.
    pub fn block_count(&self) -> Option<u64> {
        self.arch_u64("block_count")
    }

    /// `{arch}.expert_count`: routed experts per MoE layer (`None` for dense models).
    pub fn expert_count(&self) -> Option<u64> {
        self.arch_u64("expert_count")
    }

    /// `{arch}.expert_used_count`: experts each token is routed to.
    pub fn expert_used_count(&self) -> Option<u64> {
        self.arch_u64("expert_used_count")
    }

    /// `{arch}.expert_shared_count`: always-active shared experts.
    pub fn expert_shared_count(&self) -> Option<u64> {
        self.arch_u64("expert_shared_count")
    }

    /// `{arch}.context_length`: training context.
    pub fn context_length(&self) -> Option<u64> {
        self.arch_u64("context_length")
    }

    /// `{arch}.embedding_length`: residual width.
    pub fn embedding_length(&self) -> Option<u64> {
        self.arch_u64("embedding_length")
    }

    /// `{arch}.feed_forward_length`: dense FFN width.
    pub fn feed_forward_length(&self) -> Option<u64> {
        self.arch_u64("feed_forward_length")
    }

    /// `{arch}.expert_feed_forward_length`: routed expert width.
    pub fn expert_feed_forward_length(&self) -> Option<u64> {
        self.arch_u64("expert_feed_forward_length")
    }

    /// `{arch}.attention.head_count`.
    pub fn head_count(&self) -> Option<u64> {
        self.arch_u64("attention.head_count")
    }

    /// `{arch}.attention.head_count_kv`.
    pub fn head_count_kv(&self) -> Option<u64> {
        self.arch_u64("attention.head_count_kv")
    }

    /// Number of entries of `tokenizer.ggml.tokens` (the vocabulary size).
    pub fn vocab_size(&self) -> Option<usize> {
        Some(self.get("tokenizer.ggml.tokens")?.as_array()?.len())
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Routed expert tensors: those llama.cpp's `--cpu-moe` regex
    /// `\.ffn_(up|down|gate|gate_up)_(ch|)exps` matches (expert biases included).
    pub fn expert_tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors_of(TensorKind::RoutedExpert)
    }

    /// Shared-expert tensors (`_shexp`), which the expert regex never matches.
    pub fn shared_expert_tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors_of(TensorKind::SharedExpert)
    }

    /// Tensors of one kind.
    pub fn tensors_of(&self, kind: TensorKind) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter().filter(move |t| t.kind() == kind)
    }

    /// Tensors of block `layer`, in file order.
    pub fn layer_tensors(&self, layer: u32) -> impl Iterator<Item = &TensorInfo> {
        self.tensors
            .iter()
            .filter(move |t| t.layer() == Some(layer))
    }

    /// Tensors outside any block (embeddings, output head, final norm).
    pub fn global_tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter().filter(|t| t.layer().is_none())
    }

    /// Bytes per tensor kind for each block that holds tensors, in block order, plus the
    /// global tensors as `layer: None` at the end. A model has tensors in every block, so
    /// this is one entry per block `0..block_count`; a block without tensors (a split
    /// file holds only some) has no entry.
    ///
    /// # Errors
    /// [`GgufError::BlockOutOfRange`] for a tensor named `blk.N.*` with `N` at or above
    /// the file's `{arch}.block_count`: the tensor names are untrusted input, and no
    /// loader accepts a block the model does not have.
    pub fn bytes_by_layer(&self) -> Result<Vec<LayerBytes>, GgufError> {
        let block_count = self.block_count();
        // Only the blocks present get an entry: a forged name (`blk.4000000000.x`) must
        // not size an allocation.
        let mut blocks: BTreeMap<u32, LayerBytes> = BTreeMap::new();
        let mut global = LayerBytes::new(None);
        for t in &self.tensors {
            let slot = match t.layer() {
                Some(l) => {
                    if block_count.is_some_and(|n| u64::from(l) >= n) {
                        return Err(GgufError::BlockOutOfRange {
                            path: self.path.clone(),
                            tensor: t.name.clone(),
                            block: l,
                            block_count: block_count.unwrap_or_default(),
                        });
                    }
                    blocks.entry(l).or_insert_with(|| LayerBytes::new(Some(l)))
                }
                None => &mut global,
            };
            slot.add(t.kind(), t.n_bytes);
        }
        let mut out: Vec<LayerBytes> = blocks.into_values().collect();
        out.push(global);
        Ok(out)
    }
}
