//! [`GgufFile`]: metadata and tensor table of a GGUF file, read with ggml's own parser.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

use super::classify::{LayerBytes, TensorKind};
use super::error::GgufError;
use super::types::GgmlType;
use super::validate::validate;
use super::value::{code, MetaArray, MetaValue};

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
        super::classify::layer_of(&self.name)
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

/// Owns a `gguf_context` so every exit path frees it.
struct Ctx(NonNull<sys::gguf_context>);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_file and is freed exactly once.
        unsafe { sys::gguf_free(self.0.as_ptr()) }
    }
}

impl GgufFile {
    /// Opens `path` and reads its metadata and tensor table through ggml's
    /// `gguf_init_from_file` (with `no_alloc`), after checking the structure in Rust so
    /// a damaged file gives a [`GgufError`] instead of reaching an abort in C.
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
        validate(path, file, file_size)?;

        let cpath =
            CString::new(path.as_os_str().as_bytes()).map_err(|_| GgufError::NulInPath {
                path: path.to_owned(),
            })?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: cpath is NUL-terminated and outlives the call; with ctx NULL ggml only
        // builds its own gguf_context, which Ctx frees.
        let raw = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
        let ctx = Ctx(NonNull::new(raw).ok_or_else(|| GgufError::Rejected {
            path: path.to_owned(),
        })?);
        let c = ctx.0.as_ptr();

        // Below, c is a valid context; indices are in 0..gguf_get_n_kv /
        // 0..gguf_get_n_tensors, and each typed getter is only called for the type
        // gguf_get_kv_type / gguf_get_arr_type reported, which is what ggml asserts.
        // Returned strings are NUL-terminated and owned by the context.
        // SAFETY: plain getters on a valid context.
        let (version, alignment, data_offset, n_kv, n_tensors) = unsafe {
            (
                sys::gguf_get_version(c),
                sys::gguf_get_alignment(c) as u64,
                sys::gguf_get_data_offset(c) as u64,
                sys::gguf_get_n_kv(c),
                sys::gguf_get_n_tensors(c),
            )
        };
        let mut metadata = Vec::with_capacity(n_kv.max(0) as usize);
        for i in 0..n_kv {
            // SAFETY: see above.
            let key = unsafe { cstr(sys::gguf_get_key(c, i)) };
            // SAFETY: see above.
            let value = unsafe { read_value(c, i) };
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors.max(0) as usize);
        for i in 0..n_tensors {
            // SAFETY: see above; gguf_get_tensor_ne points at GGML_MAX_DIMS (4) values.
            let (name, raw_ty, ne, n_bytes, offset) = unsafe {
                let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(c, i), 4);
                (
                    cstr(sys::gguf_get_tensor_name(c, i)),
                    sys::gguf_get_tensor_type(c, i),
                    ne.to_vec(),
                    sys::gguf_get_tensor_size(c, i) as u64,
                    sys::gguf_get_tensor_offset(c, i) as u64,
                )
            };
            let ty = GgmlType::from_raw(raw_ty).ok_or_else(|| GgufError::Rejected {
                path: path.to_owned(),
            })?;
            let mut shape: Vec<u64> = ne.iter().map(|&d| d.max(0) as u64).collect();
            while shape.len() > 1 && shape.last() == Some(&1) {
                shape.pop();
            }
            tensors.push(TensorInfo {
                name,
                ty,
                shape,
                n_bytes,
                offset: data_offset + offset,
            });
        }
        drop(ctx);
        Ok(Self {
            path: path.to_owned(),
            version,
            alignment,
            data_offset,
            file_size,
            metadata,
            tensors,
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

    /// Bytes per tensor kind for every block `0..n`, where `n` is one past the highest
    /// block index found, plus the global tensors as `layer: None` at the end.
    pub fn bytes_by_layer(&self) -> Vec<LayerBytes> {
        let n = self
            .tensors
            .iter()
            .filter_map(TensorInfo::layer)
            .max()
            .map_or(0, |m| m + 1);
        let mut out: Vec<LayerBytes> = (0..n).map(|l| LayerBytes::new(Some(l))).collect();
        let mut global = LayerBytes::new(None);
        for t in &self.tensors {
            let slot = match t.layer() {
                Some(l) => &mut out[l as usize],
                None => &mut global,
            };
            slot.add(t.kind(), t.n_bytes);
        }
        out.push(global);
        out
    }
}

/// Copies a C string owned by the gguf context.
///
/// # Safety
/// `p` must be a valid NUL-terminated string.
unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Reads metadata value `i` through the typed getters.
///
/// # Safety
/// `c` must be a valid context and `i` in `0..gguf_get_n_kv(c)`.
unsafe fn read_value(c: *const sys::gguf_context, i: i64) -> MetaValue {
    // SAFETY: guaranteed by the caller; each getter matches the reported type.
    unsafe {
        let ty = sys::gguf_get_kv_type(c, i);
        match ty {
            code::U8 => MetaValue::U8(sys::gguf_get_val_u8(c, i)),
            code::I8 => MetaValue::I8(sys::gguf_get_val_i8(c, i)),
            code::U16 => MetaValue::U16(sys::gguf_get_val_u16(c, i)),
            code::I16 => MetaValue::I16(sys::gguf_get_val_i16(c, i)),
            code::U32 => MetaValue::U32(sys::gguf_get_val_u32(c, i)),
            code::I32 => MetaValue::I32(sys::gguf_get_val_i32(c, i)),
            code::F32 => MetaValue::F32(sys::gguf_get_val_f32(c, i)),
            code::BOOL => MetaValue::Bool(sys::gguf_get_val_bool(c, i)),
            code::STRING => MetaValue::String(cstr(sys::gguf_get_val_str(c, i))),
            code::U64 => MetaValue::U64(sys::gguf_get_val_u64(c, i)),
            code::I64 => MetaValue::I64(sys::gguf_get_val_i64(c, i)),
            code::F64 => MetaValue::F64(sys::gguf_get_val_f64(c, i)),
            _ => MetaValue::Array(read_array(c, i)),
        }
    }
}

/// # Safety
/// As [`read_value`], and value `i` must be an array.
unsafe fn read_array(c: *const sys::gguf_context, i: i64) -> MetaArray {
    // SAFETY: guaranteed by the caller. Non-string arrays are stored as packed
    // little-endian scalars of the element type; gguf_get_arr_data points at n of them
    // (bools as one byte each), and ggml only asserts the type is not a string.
    unsafe {
        let elem = sys::gguf_get_arr_type(c, i);
        let n = sys::gguf_get_arr_n(c, i);
        if elem == code::STRING {
            return MetaArray::String(
                (0..n)
                    .map(|j| cstr(sys::gguf_get_arr_str(c, i, j)))
                    .collect(),
            );
        }
        let data = sys::gguf_get_arr_data(c, i);
        // Copy as bytes: ggml's buffer carries no alignment promise for the element type.
        let bytes = |size: usize| -> &[u8] {
            if n == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(data.cast::<u8>(), n * size)
            }
        };
        macro_rules! arr {
            ($t:ty, $v:ident) => {{
                const N: usize = std::mem::size_of::<$t>();
                MetaArray::$v(
                    bytes(N)
                        .chunks_exact(N)
                        .map(|b| <$t>::from_ne_bytes(b.try_into().unwrap_or([0; N])))
                        .collect(),
                )
            }};
        }
        match elem {
            code::U8 => arr!(u8, U8),
            code::I8 => arr!(i8, I8),
            code::U16 => arr!(u16, U16),
            code::I16 => arr!(i16, I16),
            code::U32 => arr!(u32, U32),
            code::I32 => arr!(i32, I32),
            code::F32 => arr!(f32, F32),
            code::U64 => arr!(u64, U64),
            code::I64 => arr!(i64, I64),
            code::F64 => arr!(f64, F64),
            _ => MetaArray::Bool(bytes(1).iter().map(|&b| b != 0).collect()),
        }
    }
}
