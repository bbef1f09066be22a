//! Quantizing a GGUF model file into another one: `llama_model_quantize`, with owned
//! parameters (per-tensor type overrides by pattern, metadata overrides, an importance
//! matrix, layers to prune) and a typed error for every input C would reject.
//!
//! llama.cpp offers no progress callback for quantization (`llama_model_quantize_params`
//! has none; the pinned `src/llama-quant.cpp` only logs one line per tensor at INFO
//! level), so progress is visible only through the [`crate::logging`] hook.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use llama_cpp_moe_sys as sys;

use crate::error::PathError;
use crate::ffi::path_to_cstring;
use crate::model::{FileType, KvValue, LoadError, ParamsError};
use crate::{Backend, GgmlType};

/// The file type to quantize to (`enum llama_ftype`): the default type of the weight
/// matrices, and for the k-quant and i-quant mixes, llama.cpp's rule for which tensors
/// get a larger type. Names are llama-quantize's (`Q4_K_M`, `F16`, `COPY` excepted).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ftype {
    /// Every tensor F32.
    F32,
    /// F16 (1-d tensors stay F32, as for every type below).
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, blocks of 32, one scale.
    Q4_0,
    /// 4-bit, blocks of 32, scale and minimum.
    Q4_1,
    /// 5-bit, one scale.
    Q5_0,
    /// 5-bit, scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32.
    Q8_0,
    /// 2-bit k-quant mix.
    Q2_K,
    /// 2-bit k-quant, small mix.
    Q2_K_S,
    /// 3-bit k-quant, small mix.
    Q3_K_S,
    /// 3-bit k-quant, medium mix.
    Q3_K_M,
    /// 3-bit k-quant, large mix.
    Q3_K_L,
    /// 4-bit k-quant, small mix.
    Q4_K_S,
    /// 4-bit k-quant, medium mix.
    Q4_K_M,
    /// 5-bit k-quant, small mix.
    Q5_K_S,
    /// 5-bit k-quant, medium mix.
    Q5_K_M,
    /// 6-bit k-quant.
    Q6_K,
    /// 2.06 bpw i-quant (needs an importance matrix).
    IQ2_XXS,
    /// 2.31 bpw i-quant (needs an importance matrix).
    IQ2_XS,
    /// 2.5 bpw i-quant.
    IQ2_S,
    /// 2.7 bpw i-quant mix.
    IQ2_M,
    /// 3.06 bpw i-quant.
    IQ3_XXS,
    /// 3.3 bpw i-quant mix.
    IQ3_XS,
    /// 3.44 bpw i-quant.
    IQ3_S,
    /// 3.66 bpw i-quant mix.
    IQ3_M,
    /// 1.56 bpw i-quant (needs an importance matrix).
    IQ1_S,
    /// 1.75 bpw i-quant (needs an importance matrix).
    IQ1_M,
    /// 4.5 bpw non-linear.
    IQ4_NL,
    /// 4.25 bpw non-linear.
    IQ4_XS,
    /// Ternary, 1.69 bpw.
    TQ1_0,
    /// Ternary, 2.06 bpw.
    TQ2_0,
    /// MXFP4 routed experts, Q8_0 elsewhere.
    MXFP4_MOE,
    /// NVFP4.
    NVFP4,
    /// 1-bit, blocks of 128.
    Q1_0,
    /// 2-bit, blocks of 64.
    Q2_0,
}

impl Ftype {
    /// Every file type, in llama.h's order.
    pub const ALL: [Ftype; 36] = [
        Ftype::F32,
        Ftype::F16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q8_0,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q2_K,
        Ftype::Q3_K_S,
        Ftype::Q3_K_M,
        Ftype::Q3_K_L,
        Ftype::Q4_K_S,
        Ftype::Q4_K_M,
        Ftype::Q5_K_S,
        Ftype::Q5_K_M,
        Ftype::Q6_K,
        Ftype::IQ2_XXS,
        Ftype::IQ2_XS,
        Ftype::Q2_K_S,
        Ftype::IQ3_XS,
        Ftype::IQ3_XXS,
        Ftype::IQ1_S,
        Ftype::IQ4_NL,
        Ftype::IQ3_S,
        Ftype::IQ3_M,
        Ftype::IQ2_S,
        Ftype::IQ2_M,
        Ftype::IQ4_XS,
        Ftype::IQ1_M,
        Ftype::BF16,
        Ftype::TQ1_0,
        Ftype::TQ2_0,
        Ftype::MXFP4_MOE,
        Ftype::NVFP4,
        Ftype::Q1_0,
        Ftype::Q2_0,
    ];

    /// The raw `llama_ftype` value.
    pub fn raw(self) -> sys::llama_ftype {
        match self {
            Ftype::F32 => sys::LLAMA_FTYPE_ALL_F32,
            Ftype::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            Ftype::BF16 => sys::LLAMA_FTYPE_MOSTLY_BF16,
            Ftype::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Ftype::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Ftype::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Ftype::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Ftype::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            Ftype::Q2_K => sys::LLAMA_FTYPE_MOSTLY_Q2_K,
            Ftype::Q2_K_S => sys::LLAMA_FTYPE_MOSTLY_Q2_K_S,
            Ftype::Q3_K_S => sys::LLAMA_FTYPE_MOSTLY_Q3_K_S,
            Ftype::Q3_K_M => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
            Ftype::Q3_K_L => sys::LLAMA_FTYPE_MOSTLY_Q3_K_L,
            Ftype::Q4_K_S => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Ftype::Q4_K_M => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Ftype::Q5_K_S => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Ftype::Q5_K_M => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Ftype::Q6_K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
            Ftype::IQ2_XXS => sys::LLAMA_FTYPE_MOSTLY_IQ2_XXS,
            Ftype::IQ2_XS => sys::LLAMA_FTYPE_MOSTLY_IQ2_XS,
            Ftype::IQ2_S => sys::LLAMA_FTYPE_MOSTLY_IQ2_S,
            Ftype::IQ2_M => sys::LLAMA_FTYPE_MOSTLY_IQ2_M,
            Ftype::IQ3_XXS => sys::LLAMA_FTYPE_MOSTLY_IQ3_XXS,
            Ftype::IQ3_XS => sys::LLAMA_FTYPE_MOSTLY_IQ3_XS,
            Ftype::IQ3_S => sys::LLAMA_FTYPE_MOSTLY_IQ3_S,
            Ftype::IQ3_M => sys::LLAMA_FTYPE_MOSTLY_IQ3_M,
            Ftype::IQ1_S => sys::LLAMA_FTYPE_MOSTLY_IQ1_S,
            Ftype::IQ1_M => sys::LLAMA_FTYPE_MOSTLY_IQ1_M,
            Ftype::IQ4_NL => sys::LLAMA_FTYPE_MOSTLY_IQ4_NL,
            Ftype::IQ4_XS => sys::LLAMA_FTYPE_MOSTLY_IQ4_XS,
            Ftype::TQ1_0 => sys::LLAMA_FTYPE_MOSTLY_TQ1_0,
            Ftype::TQ2_0 => sys::LLAMA_FTYPE_MOSTLY_TQ2_0,
            Ftype::MXFP4_MOE => sys::LLAMA_FTYPE_MOSTLY_MXFP4_MOE,
            Ftype::NVFP4 => sys::LLAMA_FTYPE_MOSTLY_NVFP4,
            Ftype::Q1_0 => sys::LLAMA_FTYPE_MOSTLY_Q1_0,
            Ftype::Q2_0 => sys::LLAMA_FTYPE_MOSTLY_Q2_0,
        }
    }

    /// The [`FileType`] a model quantized to this type reports.
    pub fn file_type(self) -> FileType {
        FileType(self.raw())
    }

    /// llama-quantize's name (`"Q4_K_M"`, `"F16"`, `"MXFP4_MOE"`).
    pub fn name(self) -> &'static str {
        match self {
            Ftype::F32 => "F32",
            Ftype::F16 => "F16",
            Ftype::BF16 => "BF16",
            Ftype::Q4_0 => "Q4_0",
            Ftype::Q4_1 => "Q4_1",
            Ftype::Q5_0 => "Q5_0",
            Ftype::Q5_1 => "Q5_1",
            Ftype::Q8_0 => "Q8_0",
            Ftype::Q2_K => "Q2_K",
            Ftype::Q2_K_S => "Q2_K_S",
            Ftype::Q3_K_S => "Q3_K_S",
            Ftype::Q3_K_M => "Q3_K_M",
            Ftype::Q3_K_L => "Q3_K_L",
            Ftype::Q4_K_S => "Q4_K_S",
            Ftype::Q4_K_M => "Q4_K_M",
            Ftype::Q5_K_S => "Q5_K_S",
            Ftype::Q5_K_M => "Q5_K_M",
            Ftype::Q6_K => "Q6_K",
            Ftype::IQ2_XXS => "IQ2_XXS",
            Ftype::IQ2_XS => "IQ2_XS",
            Ftype::IQ2_S => "IQ2_S",
            Ftype::IQ2_M => "IQ2_M",
            Ftype::IQ3_XXS => "IQ3_XXS",
            Ftype::IQ3_XS => "IQ3_XS",
            Ftype::IQ3_S => "IQ3_S",
            Ftype::IQ3_M => "IQ3_M",
            Ftype::IQ1_S => "IQ1_S",
            Ftype::IQ1_M => "IQ1_M",
            Ftype::IQ4_NL => "IQ4_NL",
            Ftype::IQ4_XS => "IQ4_XS",
            Ftype::TQ1_0 => "TQ1_0",
            Ftype::TQ2_0 => "TQ2_0",
            Ftype::MXFP4_MOE => "MXFP4_MOE",
            Ftype::NVFP4 => "NVFP4",
            Ftype::Q1_0 => "Q1_0",
            Ftype::Q2_0 => "Q2_0",
        }
    }

    /// Parses llama-quantize's name (case-insensitive) or the raw number (`"15"`).
    ///
    /// ```
    /// use llama_cpp_moe::quantize::Ftype;
    /// assert_eq!(Ftype::from_name("q4_k_m"), Some(Ftype::Q4_K_M));
    /// assert_eq!(Ftype::from_name("7"), Some(Ftype::Q8_0));
    /// assert_eq!(Ftype::from_name("Q4_2"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Ftype> {
        if let Ok(raw) = name.parse::<u32>() {
            return Ftype::ALL.into_iter().find(|f| f.raw() == raw);
        }
        Ftype::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Ftype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether ggml can quantize (or convert) f32 rows into `ty`: the cases of
/// `ggml_quantize_chunk` in the pinned `ggml/src/ggml.c`, whose `default:` aborts.
pub fn is_quantize_target(ty: GgmlType) -> bool {
    matches!(
        ty.name(),
        "f32"
            | "f16"
            | "bf16"
            | "q1_0"
            | "q2_0"
            | "q4_0"
            | "q4_1"
            | "q5_0"
            | "q5_1"
            | "q8_0"
            | "mxfp4"
            | "nvfp4"
            | "q2_K"
            | "q3_K"
            | "q4_K"
            | "q5_K"
            | "q6_K"
            | "tq1_0"
            | "tq2_0"
            | "iq2_xxs"
            | "iq2_xs"
            | "iq3_xxs"
            | "iq3_s"
            | "iq2_s"
            | "iq1_s"
            | "iq1_m"
            | "iq4_nl"
            | "iq4_xs"
    )
}

/// Why a quantization was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// The input file is missing or not a model llama.cpp can read.
    #[error("quantize input")]
    Input(#[source] LoadError),
    /// A path cannot be handed to C.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The output path is the input file (llama.cpp maps the input while it writes).
    #[error("output {0:?} is the input file")]
    OutputIsInput(PathBuf),
    /// The output file cannot be created.
    #[error("cannot write output {path:?}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A type ggml cannot quantize rows into (`ggml_quantize_chunk` would abort).
    #[error("{what}: ggml cannot quantize into type {ty}")]
    UnsupportedType {
        /// Which setting named it (`"output tensor type"`, `"tensor type for PATTERN"`).
        what: String,
        /// The type.
        ty: GgmlType,
    },
    /// A per-tensor override pattern cannot be passed to C.
    #[error("tensor type pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
    /// A metadata override cannot be represented in `llama_model_kv_override`.
    #[error("metadata override")]
    KvOverride(#[source] ParamsError),
    /// An importance-matrix entry cannot be passed to C or would be rejected by it.
    #[error("importance matrix entry {name:?}: {reason}")]
    InvalidImatrix {
        /// The tensor name of the entry.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A layer index to prune does not fit C's `int32_t`.
    #[error("layer {0} to prune is out of range")]
    InvalidPruneLayer(u32),
    /// The thread count does not fit C's `int32_t`.
    #[error("thread count {0} is out of range")]
    InvalidThreads(u32),
    /// `llama_model_quantize` returned non-zero (it catches its exceptions: an unreadable
    /// tensor, a type that needs an importance matrix, a bad pattern, a write error).
    #[error("llama_model_quantize failed (code {code}){}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Failed {
        /// Its return value.
        code: u32,
        /// The error it logged, if any.
        reason: Option<String>,
    },
}

/// How to quantize: the target file type and every option of
/// `llama_model_quantize_params`, owned (patterns, metadata overrides, importance
/// matrix and pruned layers are copied into C arrays only for the call).
///
/// ```
/// use llama_cpp_moe::quantize::{Ftype, QuantizeParams};
/// use llama_cpp_moe::GgmlType;
///
/// // Q8_0 everywhere, but 4-bit routed experts (llama-quantize
/// // `--tensor-type ffn_.*_exps=q4_0 in.gguf out.gguf Q8_0`).
/// let params = QuantizeParams::new(Ftype::Q8_0)
///     .with_tensor_type("ffn_.*_exps", GgmlType::Q4_0);
/// assert_eq!(params.tensor_types().len(), 1);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct QuantizeParams {
    ftype: Ftype,
    threads: u32,
    output_tensor_type: Option<GgmlType>,
    token_embedding_type: Option<GgmlType>,
    allow_requantize: bool,
    quantize_output_tensor: bool,
    only_copy: bool,
    pure: bool,
    keep_split: bool,
    dry_run: bool,
    imatrix: Vec<(String, Vec<f32>)>,
    kv_overrides: Vec<(String, KvValue)>,
    tensor_types: Vec<(String, GgmlType)>,
    prune_layers: Vec<u32>,
    max_buf_size: usize,
}

impl QuantizeParams {
    /// llama.cpp's defaults (`llama_model_quantize_default_params`) with `ftype`: all
    /// hardware threads, output tensor quantized, no requantizing, no overrides.
    pub fn new(ftype: Ftype) -> Self {
        Self {
            ftype,
            threads: 0,
            output_tensor_type: None,
            token_embedding_type: None,
            allow_requantize: false,
            quantize_output_tensor: true,
            only_copy: false,
            pure: false,
            keep_split: false,
            dry_run: false,
            imatrix: Vec::new(),
            kv_overrides: Vec::new(),
            tensor_types: Vec::new(),
            prune_layers: Vec::new(),
            max_buf_size: 0,
        }
    }

    /// Threads (0: all hardware threads). C equivalent: `nthread`, llama-quantize's
    /// trailing `N`.
    pub fn with_threads(mut self, n: u32) -> Self {
        self.threads = n;
        self
    }

    /// Type of `output.weight`. C equivalent: `--output-tensor-type`.
    pub fn with_output_tensor_type(mut self, ty: GgmlType) -> Self {
        self.output_tensor_type = Some(ty);
        self
    }

    /// Type of the token embeddings. C equivalent: `--token-embedding-type`.
    pub fn with_token_embedding_type(mut self, ty: GgmlType) -> Self {
        self.token_embedding_type = Some(ty);
        self
    }

    /// Allow quantizing tensors that are already quantized. C equivalent:
    /// `--allow-requantize`.
    pub fn with_allow_requantize(mut self, yes: bool) -> Self {
        self.allow_requantize = yes;
        self
    }

    /// Whether to quantize `output.weight` (default yes). C equivalent:
    /// `--leave-output-tensor` sets it to false.
    pub fn with_quantize_output_tensor(mut self, yes: bool) -> Self {
        self.quantize_output_tensor = yes;
        self
    }

    /// Only copy the tensors (file type, requantize and output settings ignored).
    /// C equivalent: the `COPY` type.
    pub fn with_only_copy(mut self, yes: bool) -> Self {
        self.only_copy = yes;
        self
    }

    /// Give every tensor the default type, without the k-quant mixes' per-tensor rules.
    /// C equivalent: `--pure`.
    pub fn with_pure(mut self, yes: bool) -> Self {
        self.pure = yes;
        self
    }

    /// Write as many shards as the input has. C equivalent: `--keep-split`.
    pub fn with_keep_split(mut self, yes: bool) -> Self {
        self.keep_split = yes;
        self
    }

    /// Compute and log the result's size without writing it. C equivalent: `--dry-run`.
    pub fn with_dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// Importance-matrix values of one tensor (its name in the input file). C
    /// equivalent: `--imatrix` (whose file the caller reads).
    pub fn with_imatrix_entry(mut self, tensor: impl Into<String>, values: Vec<f32>) -> Self {
        self.imatrix.push((tensor.into(), values));
        self
    }

    /// A metadata value written to the output (and seen by the loader). C equivalent:
    /// `--override-kv`.
    pub fn with_kv_override(mut self, key: impl Into<String>, value: KvValue) -> Self {
        self.kv_overrides.push((key.into(), value));
        self
    }

    /// Tensors whose name matches `pattern` (an ECMAScript regex, searched anywhere in
    /// the name, as by `std::regex_search`) get type `ty`; the first matching pattern
    /// wins. Applies to tensors the file type would quantize. C equivalent:
    /// `--tensor-type PATTERN=TYPE`.
    pub fn with_tensor_type(mut self, pattern: impl Into<String>, ty: GgmlType) -> Self {
        self.tensor_types.push((pattern.into(), ty));
        self
    }

    /// Leave out block `layer` (the later ones are renumbered). C equivalent:
    /// `--prune-layers`.
    pub fn with_pruned_layer(mut self, layer: u32) -> Self {
        self.prune_layers.push(layer);
        self
    }

    /// Most bytes of tensor rows held in memory at once (0: llama.cpp's 8 GiB).
    pub fn with_max_buf_size(mut self, bytes: usize) -> Self {
        self.max_buf_size = bytes;
        self
    }

    /// The file type.
    pub fn ftype(&self) -> Ftype {
        self.ftype
    }

    /// The per-tensor type overrides, in the order they are tried.
    pub fn tensor_types(&self) -> &[(String, GgmlType)] {
        &self.tensor_types
    }

    /// Checks everything C would abort on or reject, and builds the raw struct.
    fn raw(&self) -> Result<RawQuantizeParams<'_>, QuantizeError> {
        let check_type = |what: String, ty: GgmlType| {
            if is_quantize_target(ty) {
                Ok(ty.raw())
            } else {
                Err(QuantizeError::UnsupportedType { what, ty })
            }
        };
        let nthread =
            i32::try_from(self.threads).map_err(|_| QuantizeError::InvalidThreads(self.threads))?;
        let output_tensor_type = match self.output_tensor_type {
            Some(ty) => check_type("output tensor type".into(), ty)?,
            None => sys::GGML_TYPE_COUNT,
        };
        let token_embedding_type = match self.token_embedding_type {
            Some(ty) => check_type("token embedding type".into(), ty)?,
            None => sys::GGML_TYPE_COUNT,
        };

        let mut patterns = Vec::with_capacity(self.tensor_types.len());
        for (pattern, ty) in &self.tensor_types {
            let bad = |reason| QuantizeError::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            };
            if pattern.is_empty() {
                return Err(bad("empty"));
            }
            let c = CString::new(pattern.as_str()).map_err(|_| bad("contains a NUL byte"))?;
            let ty = check_type(format!("tensor type for {pattern:?}"), *ty)?;
            patterns.push((c, ty));
        }
        let mut tt: Vec<sys::llama_model_tensor_override> = patterns
            .iter()
            .map(|(c, ty)| sys::llama_model_tensor_override {
                pattern: c.as_ptr(),
                type_: *ty,
            })
            .collect();
        tt.push(sys::llama_model_tensor_override {
            pattern: std::ptr::null(),
            type_: 0,
        });

        let mut kv = Vec::with_capacity(self.kv_overrides.len() + 1);
        for (key, value) in &self.kv_overrides {
            kv.push(crate::model::kv_override(key, value).map_err(QuantizeError::KvOverride)?);
        }
        // SAFETY: an all-zero llama_model_kv_override (empty key) is the terminator.
        kv.push(unsafe { std::mem::zeroed::<sys::llama_model_kv_override>() });

        let mut im_names = Vec::with_capacity(self.imatrix.len());
        for (name, values) in &self.imatrix {
            let bad = |reason| QuantizeError::InvalidImatrix {
                name: name.clone(),
                reason,
            };
            if values.is_empty() {
                return Err(bad("no values"));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad("a value is not finite"));
            }
            im_names.push(CString::new(name.as_str()).map_err(|_| bad("contains a NUL byte"))?);
        }
        let mut im: Vec<sys::llama_model_imatrix_data> = im_names
            .iter()
            .zip(&self.imatrix)
            .map(|(name, (_, values))| sys::llama_model_imatrix_data {
                name: name.as_ptr(),
                data: values.as_ptr(),
                size: values.len(),
            })
            .collect();
        im.push(sys::llama_model_imatrix_data {
            name: std::ptr::null(),
            data: std::ptr::null(),
            size: 0,
        });

        // llama-quant.cpp's remap_layer assumes a sorted list (it compares with the
        // first entry) ended by -1.
        let mut prune = Vec::with_capacity(self.prune_layers.len() + 1);
        for &layer in &self.prune_layers {
            prune.push(i32::try_from(layer).map_err(|_| QuantizeError::InvalidPruneLayer(layer))?);
        }
        prune.sort_unstable();
        prune.dedup();
        prune.push(-1);

        // SAFETY: no preconditions; returns the defaults by value.
        let mut raw = unsafe { sys::llama_model_quantize_default_params() };
        raw.nthread = nthread;
        raw.ftype = self.ftype.raw();
        raw.output_tensor_type = output_tensor_type;
        raw.token_embedding_type = token_embedding_type;
        raw.allow_requantize = self.allow_requantize;
        raw.quantize_output_tensor = self.quantize_output_tensor;
        raw.only_copy = self.only_copy;
        raw.pure_ = self.pure;
        raw.keep_split = self.keep_split;
        raw.dry_run = self.dry_run;
        if self.max_buf_size != 0 {
            raw.max_buf_size = self.max_buf_size;
        }
        raw.imatrix = if self.imatrix.is_empty() {
            std::ptr::null()
        } else {
            im.as_ptr()
        };
        raw.kv_overrides = if self.kv_overrides.is_empty() {
            std::ptr::null()
        } else {
            kv.as_ptr()
        };
        raw.tt_overrides = if self.tensor_types.is_empty() {
            std::ptr::null()
        } else {
            tt.as_ptr()
        };
        raw.prune_layers = if self.prune_layers.is_empty() {
            std::ptr::null()
        } else {
            prune.as_ptr()
        };
        Ok(RawQuantizeParams {
            raw,
            _patterns: patterns,
            _tt: tt,
            _kv: kv,
            _im_names: im_names,
            _im: im,
            _prune: prune,
            _params: PhantomData,
        })
    }
}

/// A `llama_model_quantize_params` whose pointers lead into the arrays it owns (moving a
/// `Vec` does not move its heap buffer) and into the importance-matrix values of the
/// [`QuantizeParams`] it borrows.
struct RawQuantizeParams<'p> {
    raw: sys::llama_model_quantize_params,
    _patterns: Vec<(CString, sys::ggml_type)>,
    _tt: Vec<sys::llama_model_tensor_override>,
    _kv: Vec<sys::llama_model_kv_override>,
    _im_names: Vec<CString>,
    _im: Vec<sys::llama_model_imatrix_data>,
    _prune: Vec<i32>,
    _params: PhantomData<&'p QuantizeParams>,
}

/// Quantizes the model at `input` into a new file at `output`.
/// C equivalent: `llama-quantize [flags] input output TYPE [threads]`.
///
/// Checked before C: the input is a GGUF file llama.cpp's loader would accept (our own
/// reader, so a missing or damaged file is [`QuantizeError::Input`], not an abort); the
/// output is not the input and can be created; every type can be quantized into; every
/// string can be passed to C. What only llama.cpp can decide (an architecture it does
/// not know, a type that needs an importance matrix, a malformed regex) comes back as
/// [`QuantizeError::Failed`] with the error it logged. On failure a partial output file
/// may remain. The [`Backend`] is proof that llama.cpp is initialised and its log routed
/// to us (the reason in [`QuantizeError::Failed`] comes from that log).
///
/// ```no_run
/// use llama_cpp_moe::quantize::{quantize, Ftype, QuantizeParams};
/// use llama_cpp_moe::{Backend, GgmlType};
///
/// let params = QuantizeParams::new(Ftype::Q8_0).with_tensor_type("_exps", GgmlType::Q4_0);
/// quantize(&Backend::init(), "model-f16.gguf", "model-mix.gguf", &params)?;
/// # Ok::<(), llama_cpp_moe::quantize::QuantizeError>(())
/// ```
pub fn quantize(
    _backend: &Backend,
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    params: &QuantizeParams,
) -> Result<(), QuantizeError> {
    let (input, output) = (input.as_ref(), output.as_ref());
    let c_in = path_to_cstring(input)?;
    let c_out = path_to_cstring(output)?;
    let raw = params.raw()?;
    crate::model::check_gguf(input, &params.kv_overrides).map_err(QuantizeError::Input)?;
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(QuantizeError::OutputIsInput(output.to_owned()));
        }
    }
    if !params.dry_run {
        // Opened without truncating: llama.cpp truncates it when it starts writing.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(output)
            .map_err(|source| QuantizeError::Output {
                path: output.to_owned(),
                source,
            })?;
    }
    crate::logging::clear_last_error();
    // SAFETY: both paths are NUL-terminated; every pointer in raw.raw leads into `raw`'s
    // arrays or `params`' importance-matrix values, all alive and unchanged for the call
    // (the pinned src/llama-quant.cpp copies what it keeps: patterns into std::regex,
    // imatrix values into vectors, prune indices into a vector; nothing after return).
    // Every C++ exception is caught inside llama_model_quantize; the inputs whose misuse
    // would GGML_ABORT instead (types ggml_quantize_chunk lacks, unterminated arrays)
    // were ruled out by `params.raw()`.
    let code = unsafe { sys::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &raw.raw) };
    let reason = crate::logging::take_last_error();
    drop(raw);
    if code != 0 {
        return Err(QuantizeError::Failed { code, reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::c_char;

    use super::*;

    #[test]
    fn every_ftype_has_a_default_type_in_llama_cpp_and_round_trips_its_name() {
        for f in Ftype::ALL {
            assert_eq!(Ftype::from_name(f.name()), Some(f));
            assert_eq!(Ftype::from_name(&f.raw().to_string()), Some(f));
            // llama_ftype_name knows every one ("unknown, may not work" otherwise).
            assert!(!f.file_type().name().contains("unknown"), "{f}");
        }
    }

    #[test]
    fn raw_arrays_are_terminated_and_point_into_owned_copies() {
        let params = QuantizeParams::new(Ftype::Q4_K_M)
            .with_tensor_type("ffn_.*_exps", GgmlType::Q4_0)
            .with_tensor_type("attn", GgmlType::Q8_0)
            .with_pruned_layer(3)
            .with_pruned_layer(1)
            .with_imatrix_entry("blk.0.ffn_up.weight", vec![1.0, 2.0])
            .with_kv_override("general.name", KvValue::Str("x".into()))
            .with_threads(2);
        let raw = params.raw().unwrap();
        assert_eq!(raw.raw.nthread, 2);
        assert_eq!(raw.raw.ftype, sys::LLAMA_FTYPE_MOSTLY_Q4_K_M);
        assert_eq!(raw.raw.output_tensor_type, sys::GGML_TYPE_COUNT);
        // SAFETY: the arrays live in `raw`, each terminated as llama-quant.cpp expects.
        unsafe {
            let tt = std::slice::from_raw_parts(raw.raw.tt_overrides, 3);
            let p0 = std::ffi::CStr::from_ptr(tt[0].pattern).to_str().unwrap();
            assert_eq!((p0, tt[0].type_), ("ffn_.*_exps", GgmlType::Q4_0.raw()));
            assert!(tt[2].pattern.is_null());
            assert_eq!(
                std::slice::from_raw_parts(raw.raw.prune_layers, 3),
                [1, 3, -1]
            );
            let im = std::slice::from_raw_parts(raw.raw.imatrix, 2);
            assert_eq!(
                std::slice::from_raw_parts(im[0].data, im[0].size),
                [1.0, 2.0]
            );
            assert!(im[1].name.is_null());
            let kv = std::slice::from_raw_parts(raw.raw.kv_overrides, 2);
            assert_eq!(kv[0].key[0] as u8, b'g');
            assert_eq!(kv[1].key[0], 0 as c_char);
        }
        let empty = QuantizeParams::new(Ftype::Q8_0);
        let raw = empty.raw().unwrap();
        assert!(raw.raw.tt_overrides.is_null() && raw.raw.prune_layers.is_null());
        assert!(raw.raw.imatrix.is_null() && raw.raw.kv_overrides.is_null());
    }

    #[test]
    fn inputs_c_would_abort_on_are_refused() {
        let q8_1 = GgmlType::from_name("q8_1").unwrap();
        let err = |p: QuantizeParams| p.raw().err().unwrap().to_string();
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_tensor_type("x", q8_1))
                .contains("cannot quantize into type q8_1")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_output_tensor_type(q8_1))
                .starts_with("output tensor type")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_tensor_type("", GgmlType::Q8_0))
                .contains("empty")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_tensor_type("a\0", GgmlType::Q8_0))
                .contains("NUL")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_imatrix_entry("t", vec![f32::NAN]))
                .contains("not finite")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_pruned_layer(u32::MAX))
                .contains("out of range")
        );
        assert!(
            err(QuantizeParams::new(Ftype::Q8_0).with_threads(u32::MAX)).contains("out of range")
        );
    }
}
