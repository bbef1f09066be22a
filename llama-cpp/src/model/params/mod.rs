//! `ModelParams`: how a model is loaded and where its tensors go.
//!
//! The builder and its plain settings live here; `overrides` holds the tensor override
//! types and their builders (`-ot`, `--cpu-moe`, `--n-cpu-moe`, `--n-cpu-ffn`), `regex`
//! the checks of override patterns against the loader's `std::regex`, and `raw` the
//! conversion to `llama_model_params`, one piece per array C receives.

mod overrides;
mod raw;
mod regex;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex};

use llama_cpp_moe_sys as sys;

pub use overrides::{
    dense_ffn_layer_pattern, expert_layer_pattern, OverrideKind, OverrideTarget, TensorOverride,
    DENSE_FFN_REGEX, EXPERTS_REGEX,
};
pub(crate) use raw::kv_override;
pub use regex::regex_search;

use crate::backend::{Backend, Device, UnknownBufferType};

/// Why a [`ModelParams`] cannot be handed to llama.cpp.
///
/// Builders never fail; [`ModelParams::validate`] and [`crate::Model::load`] report
/// the problem before any C++ code sees the params.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// A tensor-override pattern contains a NUL byte.
    #[error("tensor override pattern {pattern:?} contains a NUL byte")]
    NulInPattern {
        /// The pattern (NUL shown as `\0`).
        pattern: String,
    },
    /// A tensor-override pattern the loader cannot use: not a valid `std::regex` (the
    /// loader would throw), or one whose search could backtrack for minutes or forever
    /// (the load would hang; see docs/security.md, "Override patterns").
    #[error("tensor override pattern {pattern:?} is refused: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why: `std::regex_error::what()`, or the backtracking shape found.
        reason: String,
    },
    /// The target of the tensor override with this pattern matches no buffer type;
    /// the source says which name and lists the ones that exist.
    #[error("tensor override {pattern:?}")]
    UnknownBufferType {
        /// The override's pattern.
        pattern: String,
        /// The name that matched nothing, and the names that exist.
        #[source]
        source: UnknownBufferType,
    },
    /// More overrides than `llama_max_tensor_buft_overrides()`.
    #[error("{count} tensor overrides, llama.cpp accepts at most {max}")]
    TooManyOverrides {
        /// How many the params hold.
        count: usize,
        /// `llama_max_tensor_buft_overrides()`.
        max: usize,
    },
    /// More devices or tensor-split entries than `llama_max_devices()`.
    #[error("{what} has {count} entries, llama.cpp accepts at most {max}")]
    TooManyDevices {
        /// `"devices"` or `"tensor_split"`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// `llama_max_devices()`.
        max: usize,
    },
    /// A metadata override cannot be represented in `llama_model_kv_override`.
    #[error("metadata override {key:?}: {reason}")]
    InvalidKvOverride {
        /// The key.
        key: String,
        /// What is wrong (too long, NUL byte, empty).
        reason: &'static str,
    },
}

/// How layers (or rows) are spread over several devices. C equivalent: `-sm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SplitMode {
    /// Everything on the main device (`-sm none`).
    None,
    /// Whole layers per device (`-sm layer`, llama.cpp's default).
    #[default]
    Layer,
    /// Rows of each matrix across devices (`-sm row`).
    Row,
    /// Tensor parallelism over a meta device (`-sm tensor`).
    Tensor,
}

impl SplitMode {
    pub(super) fn raw(self) -> sys::llama_split_mode {
        match self {
            SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
            SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
            SplitMode::Row => sys::LLAMA_SPLIT_MODE_ROW,
            SplitMode::Tensor => sys::LLAMA_SPLIT_MODE_TENSOR,
        }
    }
}

/// How the file's bytes get into memory. C equivalent: `--load-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoadMode {
    /// llama.cpp decides from the devices (the default).
    #[default]
    Auto,
    /// Plain reads, no mmap (`--load-mode none`, `--no-mmap`).
    Read,
    /// Memory-map the file (`--load-mode mmap`).
    Mmap,
    /// Read and lock in RAM (`--load-mode mlock`).
    Mlock,
    /// Memory-map and lock in RAM (`--mlock`).
    MmapMlock,
    /// Direct I/O where the OS supports it (`--load-mode direct-io`).
    DirectIo,
}

impl LoadMode {
    pub(super) fn raw(self) -> sys::llama_load_mode {
        match self {
            LoadMode::Auto => sys::LLAMA_LOAD_MODE_AUTO,
            LoadMode::Read => sys::LLAMA_LOAD_MODE_NONE,
            LoadMode::Mmap => sys::LLAMA_LOAD_MODE_MMAP,
            LoadMode::Mlock => sys::LLAMA_LOAD_MODE_MLOCK,
            LoadMode::MmapMlock => sys::LLAMA_LOAD_MODE_MMAP_MLOCK,
            LoadMode::DirectIo => sys::LLAMA_LOAD_MODE_DIRECT_IO,
        }
    }
}

/// A metadata value that replaces the one in the GGUF file. C equivalent: `--override-kv`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KvValue {
    /// `KEY=int:N`.
    Int(i64),
    /// `KEY=float:F`.
    Float(f64),
    /// `KEY=bool:B`.
    Bool(bool),
    /// `KEY=str:S` (at most 127 bytes).
    Str(String),
}

type ProgressFn = dyn FnMut(f32) -> bool + Send;

/// How to load a model: layers to offload, memory mapping, and tensor placement.
///
/// The params own everything the raw `llama_model_params` points to (pattern strings,
/// metadata overrides, device list, tensor split, the progress closure); the raw struct
/// and its `{pattern, buft} … {NULL, NULL}` array are built only for the duration of
/// [`crate::Model::load`], from this owned data. Named buffer types are resolved then,
/// against the devices registered at that moment.
///
/// The params never point at memory they do not own. A pattern is copied in, so the
/// original may be dropped before the load:
///
/// ```
/// use llama_cpp_moe::ModelParams;
/// let params = {
///     let pattern = format!(r"blk\.{}\.ffn_up_exps", 3);
///     ModelParams::default().with_tensor_override(pattern.as_str(), "CPU")
/// }; // `pattern` is gone; params hold their own C string
/// assert_eq!(params.tensor_overrides().next().unwrap().pattern(), r"blk\.3\.ffn_up_exps");
/// ```
///
/// and nothing borrowed can be stored in them, e.g. a progress callback that borrows a
/// local:
///
/// ```compile_fail
/// use llama_cpp_moe::ModelParams;
/// let params;
/// {
///     let mut seen = Vec::<f32>::new();
///     let seen_ref = &mut seen;
///     params = ModelParams::default().with_progress_callback(move |p| {
///         seen_ref.push(p);
///         true
///     });
/// } // error: `seen` does not live long enough
/// drop(params);
/// ```
///
/// The type has no lifetime parameter through which a borrow could enter:
///
/// ```compile_fail
/// use llama_cpp_moe::ModelParams;
/// fn keep(_: ModelParams<'_>) {} // error: struct takes 0 lifetime arguments
/// ```
#[derive(Clone)]
#[must_use]
pub struct ModelParams {
    pub(super) n_gpu_layers: i32,
    pub(super) split_mode: SplitMode,
    pub(super) main_gpu: i32,
    pub(super) devices: Vec<Device>,
    pub(super) tensor_split: Vec<f32>,
    pub(super) load_mode: LoadMode,
    pub(super) vocab_only: bool,
    pub(super) check_tensors: bool,
    pub(super) use_extra_bufts: bool,
    pub(super) no_host: bool,
    pub(super) no_alloc: bool,
    pub(super) kv_overrides: Vec<(String, KvValue)>,
    pub(super) explicit_overrides: Vec<TensorOverride>,
    pub(super) moe_overrides: Vec<TensorOverride>,
    /// Shared by clones (reference-counted).
    progress: Option<Arc<Mutex<Box<ProgressFn>>>>,
    pub(super) invalid: Option<ParamsError>,
}

impl fmt::Debug for ModelParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelParams")
            .field("n_gpu_layers", &self.n_gpu_layers)
            .field("split_mode", &self.split_mode)
            .field("main_gpu", &self.main_gpu)
            .field("devices", &self.devices)
            .field("tensor_split", &self.tensor_split)
            .field("load_mode", &self.load_mode)
            .field("vocab_only", &self.vocab_only)
            .field("check_tensors", &self.check_tensors)
            .field("use_extra_bufts", &self.use_extra_bufts)
            .field("no_host", &self.no_host)
            .field("no_alloc", &self.no_alloc)
            .field("kv_overrides", &self.kv_overrides)
            .field(
                "tensor_overrides",
                &self.tensor_overrides().collect::<Vec<_>>(),
            )
            .field("progress_callback", &self.progress.is_some())
            .field("invalid", &self.invalid)
            .finish()
    }
}

impl Default for ModelParams {
    fn default() -> Self {
        // SAFETY: returns a plain struct by value.
        let raw = unsafe { sys::llama_model_default_params() };
        ModelParams {
            n_gpu_layers: raw.n_gpu_layers,
            split_mode: SplitMode::default(),
            main_gpu: raw.main_gpu,
            devices: Vec::new(),
            tensor_split: Vec::new(),
            load_mode: LoadMode::default(),
            vocab_only: raw.vocab_only,
            check_tensors: raw.check_tensors,
            use_extra_bufts: raw.use_extra_bufts,
            no_host: raw.no_host,
            no_alloc: raw.no_alloc,
            kv_overrides: Vec::new(),
            explicit_overrides: Vec::new(),
            moe_overrides: Vec::new(),
            progress: None,
            invalid: None,
        }
    }
}

/// `llama_max_tensor_buft_overrides()`: the longest override array llama.cpp accepts.
pub fn max_tensor_overrides() -> usize {
    // SAFETY: a constant query.
    unsafe { sys::llama_max_tensor_buft_overrides() }
}

/// `llama_max_devices()`: the longest device list / tensor split llama.cpp accepts.
pub fn max_devices() -> usize {
    // SAFETY: a constant query.
    unsafe { sys::llama_max_devices() }
}

impl ModelParams {
    /// Number of layers to store on accelerators; negative means all.
    ///
    /// C equivalent: `-ngl N`.
    pub fn with_n_gpu_layers(mut self, n: i32) -> Self {
        self.n_gpu_layers = n;
        self
    }

    /// Store every layer (and the output layer) on accelerators: `-ngl all`.
    pub fn with_all_gpu_layers(self) -> Self {
        self.with_n_gpu_layers(-1)
    }

    /// How to split the model across devices. C equivalent: `-sm MODE`.
    pub fn with_split_mode(mut self, mode: SplitMode) -> Self {
        self.split_mode = mode;
        self
    }

    /// The device (index into the offload devices) used with [`SplitMode::None`];
    /// negative keeps everything on the CPU. C equivalent: `-mg N`.
    pub fn with_main_gpu(mut self, index: i32) -> Self {
        self.main_gpu = index;
        self
    }

    /// Offload only to these devices, in this order (default: every GPU, RPC servers
    /// first). At most [`max_devices`]. C equivalent: `-dev CUDA0,RPC0`.
    pub fn with_devices(mut self, devices: impl IntoIterator<Item = Device>) -> Self {
        self.devices = devices.into_iter().collect();
        self
    }

    /// Proportion of the model to put on each offload device. At most [`max_devices`]
    /// entries. C equivalent: `-ts 3,1`.
    pub fn with_tensor_split(mut self, split: impl IntoIterator<Item = f32>) -> Self {
        self.tensor_split = split.into_iter().collect();
        self
    }

    /// How the file is read. C equivalent: `--load-mode MODE` (`--no-mmap`, `--mlock`).
    pub fn with_load_mode(mut self, mode: LoadMode) -> Self {
        self.load_mode = mode;
        self
    }

    /// Load only the vocabulary, no weights. C equivalent: `vocab_only = true`.
    pub fn with_vocab_only(mut self, vocab_only: bool) -> Self {
        self.vocab_only = vocab_only;
        self
    }

    /// Validate tensor data while loading. C equivalent: `--check-tensors`.
    pub fn with_check_tensors(mut self, check: bool) -> Self {
        self.check_tensors = check;
        self
    }

    /// Allow the CPU's extra (repacking) buffer types; on by default.
    /// C equivalent: `--no-repack` turns it off.
    pub fn with_extra_bufts(mut self, use_extra: bool) -> Self {
        self.use_extra_bufts = use_extra;
        self
    }

    /// Bypass the devices' pinned host buffers so extra buffer types can be used.
    /// C equivalent: `--no-host`.
    pub fn with_no_host(mut self, no_host: bool) -> Self {
        self.no_host = no_host;
        self
    }

    /// Read metadata and simulate allocations without loading weights (what
    /// `llama_params_fit` uses to size a model). Such a load always uses plain reads
    /// (llama.cpp aborts on `no_alloc` with mmap) and its model holds no weight data:
    /// measure with [`crate::Model::dry_run`] rather than loading this way yourself.
    /// C equivalent: `no_alloc = true`.
    pub fn with_no_alloc(mut self, no_alloc: bool) -> Self {
        self.no_alloc = no_alloc;
        self
    }

    /// Replace a GGUF metadata value at load time. Keys and string values are limited to
    /// 127 bytes. C equivalent: `--override-kv KEY=TYPE:VALUE`.
    ///
    /// ```
    /// use llama_cpp_moe::model::KvValue;
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default()
    ///     .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(4));
    /// assert_eq!(params.kv_overrides().len(), 1);
    /// ```
    pub fn with_kv_override(mut self, key: impl Into<String>, value: KvValue) -> Self {
        self.kv_overrides.push((key.into(), value));
        self
    }

    /// Called during loading with progress in `0.0..=1.0`; returning `false` aborts
    /// the load ([`crate::model::LoadError::Aborted`]). A panic inside the callback
    /// aborts the load too and is resumed once llama.cpp has returned.
    /// C equivalent: `progress_callback` / `progress_callback_user_data`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default().with_progress_callback(|p| {
    ///     eprintln!("loading: {:.0}%", p * 100.0);
    ///     true
    /// });
    /// # drop(params);
    /// ```
    pub fn with_progress_callback(
        mut self,
        callback: impl FnMut(f32) -> bool + Send + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(Mutex::new(Box::new(callback))));
        self
    }

    fn remember(&mut self, error: ParamsError) {
        self.invalid.get_or_insert(error);
    }

    /// The devices set with [`ModelParams::with_devices`] (empty: llama.cpp's default).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Number of layers to store on accelerators (negative: all).
    pub fn n_gpu_layers(&self) -> i32 {
        self.n_gpu_layers
    }

    /// The split mode.
    pub fn split_mode(&self) -> SplitMode {
        self.split_mode
    }

    /// The load mode.
    pub fn load_mode(&self) -> LoadMode {
        self.load_mode
    }

    /// Whether only the vocabulary is loaded.
    pub fn vocab_only(&self) -> bool {
        self.vocab_only
    }

    /// The metadata overrides, in the order given.
    pub fn kv_overrides(&self) -> &[(String, KvValue)] {
        &self.kv_overrides
    }

    pub(crate) fn progress_callback(&self) -> Option<&Arc<Mutex<Box<ProgressFn>>>> {
        self.progress.as_ref()
    }

    /// Runs every check [`crate::Model::load`] runs before calling llama.cpp: pattern
    /// syntax (with the loader's `std::regex`), NUL bytes, the override and device
    /// limits, metadata-override sizes, and buffer-type names against the devices
    /// registered now.
    ///
    /// ```
    /// use llama_cpp_moe::model::ParamsError;
    /// use llama_cpp_moe::{Backend, ModelParams};
    /// let backend = Backend::init();
    /// let bad = ModelParams::default().with_tensor_override("((", "CPU");
    /// assert!(matches!(bad.validate(&backend), Err(ParamsError::InvalidPattern { .. })));
    /// let unknown = ModelParams::default().with_tensor_override("x", "NoSuchGPU");
    /// assert!(matches!(
    ///     unknown.validate(&backend),
    ///     Err(ParamsError::UnknownBufferType { pattern, .. }) if pattern == "x"
    /// ));
    /// ```
    ///
    /// # Errors
    /// The first problem found, as a [`ParamsError`].
    pub fn validate(&self, backend: &Backend) -> Result<(), ParamsError> {
        self.to_raw(backend).map(|_| ())
    }
}
