//! `ModelParams`: how a model is loaded and where its tensors go.

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CString};
use std::fmt;
use std::sync::{Arc, Mutex};

use llama_cpp_moe_sys as sys;

use super::placement::{
    check_regex, dense_ffn_layer_pattern, expert_layer_pattern, OverrideKind, OverrideTarget,
    TensorOverride, EXPERTS_REGEX,
};
use crate::backend::{Backend, BufferType, Device, UnknownBufferType};

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
    /// A tensor-override pattern is not a valid `std::regex` (the loader would throw).
    #[error("tensor override pattern {pattern:?} is not a valid std::regex: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// `std::regex_error::what()`.
        reason: String,
    },
    /// A named override target matches no buffer type.
    #[error(transparent)]
    UnknownBufferType(#[from] UnknownBufferType),
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
    fn raw(self) -> sys::llama_split_mode {
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
    fn raw(self) -> sys::llama_load_mode {
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
#[must_use]
pub struct ModelParams {
    n_gpu_layers: i32,
    split_mode: SplitMode,
    main_gpu: i32,
    devices: Vec<Device>,
    tensor_split: Vec<f32>,
    load_mode: LoadMode,
    vocab_only: bool,
    check_tensors: bool,
    use_extra_bufts: bool,
    no_host: bool,
    no_alloc: bool,
    kv_overrides: Vec<(String, KvValue)>,
    explicit_overrides: Vec<TensorOverride>,
    moe_overrides: Vec<TensorOverride>,
    progress: Option<Arc<Mutex<Box<ProgressFn>>>>,
    invalid: Option<ParamsError>,
}

impl Clone for ModelParams {
    /// Clones share the progress callback (it is reference-counted).
    fn clone(&self) -> Self {
        ModelParams {
            n_gpu_layers: self.n_gpu_layers,
            split_mode: self.split_mode,
            main_gpu: self.main_gpu,
            devices: self.devices.clone(),
            tensor_split: self.tensor_split.clone(),
            load_mode: self.load_mode,
            vocab_only: self.vocab_only,
            check_tensors: self.check_tensors,
            use_extra_bufts: self.use_extra_bufts,
            no_host: self.no_host,
            no_alloc: self.no_alloc,
            kv_overrides: self.kv_overrides.clone(),
            explicit_overrides: self.explicit_overrides.clone(),
            moe_overrides: self.moe_overrides.clone(),
            progress: self.progress.clone(),
            invalid: self.invalid.clone(),
        }
    }
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
    /// `llama_params_fit` uses to size a model). C equivalent: `no_alloc = true`.
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

    /// Send tensors whose name matches the `std::regex` `pattern` to `target`.
    /// Explicit overrides come before every MoE/FFN override, in call order; the first
    /// matching entry wins.
    ///
    /// `target` is [`OverrideTarget::Cpu`], a [`Device`], a [`BufferType`], or a
    /// buffer-type name such as `"CPU"`, `"CUDA0"` or `"RPC0[127.0.0.1:50052]"`,
    /// resolved at load time like llama.cpp's `-ot` (an unknown name fails the load
    /// with a list of the names that exist). The pattern is checked with the loader's
    /// own `std::regex` before llama.cpp sees it.
    ///
    /// C equivalent: `-ot PATTERN=TARGET`.
    ///
    /// ```
    /// use llama_cpp_moe::model::OverrideTarget;
    /// use llama_cpp_moe::ModelParams;
    /// // Like `-ot 'blk\.(2|3)\.ffn_.*_exps=CPU' --n-cpu-moe 1`:
    /// let params = ModelParams::default()
    ///     .with_cpu_moe(1)
    ///     .with_tensor_override(r"blk\.(2|3)\.ffn_.*_exps", OverrideTarget::Cpu);
    /// let patterns: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    /// assert_eq!(
    ///     patterns,
    ///     [r"blk\.(2|3)\.ffn_.*_exps", r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps"]
    /// );
    /// ```
    pub fn with_tensor_override(
        mut self,
        pattern: impl Into<String>,
        target: impl Into<OverrideTarget>,
    ) -> Self {
        let pattern = pattern.into();
        match CString::new(pattern) {
            Ok(pattern) => self.explicit_overrides.push(TensorOverride {
                pattern,
                target: target.into(),
                kind: OverrideKind::Explicit,
            }),
            Err(e) => {
                let pattern = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\\0");
                self.remember(ParamsError::NulInPattern { pattern });
            }
        }
        self
    }

    /// Keep the routed experts of the first `n_layers` layers in host memory; everything
    /// else goes where `n_gpu_layers` puts it. Adds `blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps`
    /// → CPU for `i < n_layers` (shared experts never match).
    ///
    /// Layers the model does not have match nothing: loading works as if `n_layers` were
    /// the model's layer count, and [`crate::Model::load`] logs one `warn!` about it.
    /// Each layer is one override entry, so more than [`max_tensor_overrides`] layers
    /// in total is a [`ParamsError::TooManyOverrides`] at load time.
    ///
    /// C equivalent: `--n-cpu-moe N`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// // `llama-server -ngl 99 --n-cpu-moe 20`:
    /// let params = ModelParams::default().with_n_gpu_layers(99).with_cpu_moe(20);
    /// assert_eq!(params.tensor_overrides().count(), 20);
    /// ```
    pub fn with_cpu_moe(self, n_layers: u32) -> Self {
        self.with_cpu_moe_layers(0..n_layers)
    }

    /// Keep the routed experts of every layer in host memory: one override,
    /// `\.ffn_(up|down|gate|gate_up)_(ch|)exps` → CPU.
    ///
    /// C equivalent: `--cpu-moe`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default().with_cpu_moe_all();
    /// let only = params.tensor_overrides().next().unwrap();
    /// assert_eq!(only.pattern(), r"\.ffn_(up|down|gate|gate_up)_(ch|)exps");
    /// ```
    pub fn with_cpu_moe_all(mut self) -> Self {
        self.moe_overrides.push(TensorOverride {
            pattern: CString::new(EXPERTS_REGEX).expect("constant without NUL"),
            target: OverrideTarget::Cpu,
            kind: OverrideKind::Experts { layer: None },
        });
        self
    }

    /// Keep the routed experts of exactly these layers in host memory, in the order
    /// given (duplicates are dropped). Use it for the *last* layers, which ik_llama.cpp
    /// measured ~10% faster for prompt processing than the first ones at equal VRAM.
    /// Layers the model does not have are handled like in [`ModelParams::with_cpu_moe`].
    ///
    /// C equivalent: one `-ot 'blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU'` per layer.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let n_layer = 48;
    /// let params = ModelParams::default().with_cpu_moe_layers(n_layer - 8..n_layer);
    /// let first = params.tensor_overrides().next().unwrap();
    /// assert_eq!(first.pattern(), r"blk\.40\.ffn_(up|down|gate|gate_up)_(ch|)exps");
    /// ```
    pub fn with_cpu_moe_layers(mut self, layers: impl IntoIterator<Item = u32>) -> Self {
        let mut present = self.moe_override_kinds();
        for layer in layers {
            let kind = OverrideKind::Experts { layer: Some(layer) };
            if !present.insert(kind) {
                continue;
            }
            if self.too_many_to_add() {
                break;
            }
            self.moe_overrides.push(TensorOverride {
                pattern: CString::new(expert_layer_pattern(layer)).expect("digits only"),
                target: OverrideTarget::Cpu,
                kind,
            });
        }
        self
    }

    /// Keep the dense FFN weights of the first `n_layers` layers in host memory: adds
    /// `blk\.{i}\.ffn_(up|down|gate)\.` → CPU for `i < n_layers` (for dense models;
    /// MoE experts need [`ModelParams::with_cpu_moe`]).
    ///
    /// C equivalent: `--n-cpu-ffn N`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default().with_cpu_ffn(2);
    /// let patterns: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    /// assert_eq!(patterns, [r"blk\.0\.ffn_(up|down|gate)\.", r"blk\.1\.ffn_(up|down|gate)\."]);
    /// ```
    pub fn with_cpu_ffn(mut self, n_layers: u32) -> Self {
        let mut present = self.moe_override_kinds();
        for layer in 0..n_layers {
            let kind = OverrideKind::DenseFfn { layer };
            if !present.insert(kind) {
                continue;
            }
            if self.too_many_to_add() {
                break;
            }
            self.moe_overrides.push(TensorOverride {
                pattern: CString::new(dense_ffn_layer_pattern(layer)).expect("digits only"),
                target: OverrideTarget::Cpu,
                kind,
            });
        }
        self
    }

    /// The kinds already added, hashed once per builder call: a per-layer linear scan
    /// made `with_cpu_moe(1000)` quadratic (0.65 ms instead of microseconds).
    fn moe_override_kinds(&self) -> HashSet<OverrideKind> {
        self.moe_overrides.iter().map(|o| o.kind).collect()
    }

    /// Once past the limit, further entries only waste memory (`with_cpu_moe(u32::MAX)`
    /// would otherwise build four billion strings); the count is reported at load.
    fn too_many_to_add(&mut self) -> bool {
        let count = self.explicit_overrides.len() + self.moe_overrides.len();
        let max = max_tensor_overrides();
        if count >= max {
            self.remember(ParamsError::TooManyOverrides {
                count: count + 1,
                max,
            });
            return true;
        }
        false
    }

    fn remember(&mut self, error: ParamsError) {
        self.invalid.get_or_insert(error);
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

    /// The tensor overrides in the order llama.cpp receives them: explicit ones
    /// ([`ModelParams::with_tensor_override`]) first, then the MoE/FFN ones.
    pub fn tensor_overrides(&self) -> impl Iterator<Item = &TensorOverride> {
        self.explicit_overrides
            .iter()
            .chain(self.moe_overrides.iter())
    }

    /// Whether any MoE builder added routed-expert overrides.
    pub(crate) fn has_expert_overrides(&self) -> bool {
        self.moe_overrides
            .iter()
            .any(|o| matches!(o.kind, OverrideKind::Experts { .. }))
    }

    /// The largest layer index named by a per-layer MoE/FFN builder.
    pub(crate) fn max_override_layer(&self) -> Option<u32> {
        self.moe_overrides
            .iter()
            .filter_map(|o| match o.kind {
                OverrideKind::Experts { layer } => layer,
                OverrideKind::DenseFfn { layer } => Some(layer),
                OverrideKind::Explicit => None,
            })
            .max()
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
    /// assert!(matches!(unknown.validate(&backend), Err(ParamsError::UnknownBufferType(_))));
    /// ```
    ///
    /// # Errors
    /// The first problem found, as a [`ParamsError`].
    pub fn validate(&self, backend: &Backend) -> Result<(), ParamsError> {
        self.to_raw(backend).map(|_| ())
    }

    /// Builds the raw struct after validating everything. Pointers in it borrow from
    /// `self` (pattern strings) or from the returned value (arrays), hence the lifetime.
    pub(crate) fn to_raw(&self, backend: &Backend) -> Result<RawModelParams<'_>, ParamsError> {
        if let Some(e) = &self.invalid {
            return Err(e.clone());
        }
        let count = self.explicit_overrides.len() + self.moe_overrides.len();
        let max = max_tensor_overrides();
        if count > max {
            return Err(ParamsError::TooManyOverrides { count, max });
        }
        let max_dev = max_devices();
        if self.devices.len() > max_dev {
            return Err(ParamsError::TooManyDevices {
                what: "devices",
                count: self.devices.len(),
                max: max_dev,
            });
        }
        if self.tensor_split.len() > max_dev {
            return Err(ParamsError::TooManyDevices {
                what: "tensor_split",
                count: self.tensor_split.len(),
                max: max_dev,
            });
        }

        let mut overrides = Vec::with_capacity(count + 1);
        for o in self.tensor_overrides() {
            if o.kind == OverrideKind::Explicit {
                check_regex(&o.pattern).map_err(|reason| ParamsError::InvalidPattern {
                    pattern: o.pattern().to_owned(),
                    reason,
                })?;
            }
            let buft = match &o.target {
                OverrideTarget::Cpu => BufferType::cpu(backend),
                OverrideTarget::BufferType(b) => *b,
                OverrideTarget::Device(d) => d.buffer_type().ok_or_else(|| UnknownBufferType {
                    name: format!("(default buffer type of device {})", d.name()),
                    available: backend
                        .buffer_types()
                        .iter()
                        .map(BufferType::name)
                        .collect(),
                })?,
                OverrideTarget::Named(name) => backend.buffer_type_by_name(name)?,
            };
            overrides.push(sys::llama_model_tensor_buft_override {
                pattern: o.pattern.as_ptr(),
                buft: buft.as_ptr(),
            });
        }
        overrides.push(sys::llama_model_tensor_buft_override {
            pattern: std::ptr::null(),
            buft: std::ptr::null_mut(),
        });

        let mut kv = Vec::with_capacity(self.kv_overrides.len() + 1);
        for (key, value) in &self.kv_overrides {
            kv.push(kv_override(key, value)?);
        }
        // SAFETY: an all-zero llama_model_kv_override (empty key) is the terminator.
        kv.push(unsafe { std::mem::zeroed::<sys::llama_model_kv_override>() });

        let mut devices: Vec<sys::ggml_backend_dev_t> =
            self.devices.iter().map(Device::as_ptr).collect();
        devices.push(std::ptr::null_mut());

        let mut split = self.tensor_split.clone();
        split.resize(max_dev, 0.0);

        // SAFETY: returns a plain struct by value.
        let mut raw = unsafe { sys::llama_model_default_params() };
        raw.n_gpu_layers = self.n_gpu_layers;
        raw.split_mode = self.split_mode.raw();
        raw.main_gpu = self.main_gpu;
        raw.load_mode = self.load_mode.raw();
        raw.vocab_only = self.vocab_only;
        raw.check_tensors = self.check_tensors;
        raw.use_extra_bufts = self.use_extra_bufts;
        raw.no_host = self.no_host;
        raw.no_alloc = self.no_alloc;
        // Heap buffers of the Vecs below do not move when RawModelParams moves.
        raw.tensor_buft_overrides = if count == 0 {
            std::ptr::null()
        } else {
            overrides.as_ptr()
        };
        raw.kv_overrides = if self.kv_overrides.is_empty() {
            std::ptr::null()
        } else {
            kv.as_ptr()
        };
        raw.devices = if self.devices.is_empty() {
            std::ptr::null_mut()
        } else {
            devices.as_mut_ptr()
        };
        raw.tensor_split = if self.tensor_split.is_empty() {
            std::ptr::null()
        } else {
            split.as_ptr()
        };
        Ok(RawModelParams {
            raw,
            _overrides: overrides,
            _kv: kv,
            _devices: devices,
            _split: split,
            _owner: std::marker::PhantomData,
        })
    }
}

fn kv_override(key: &str, value: &KvValue) -> Result<sys::llama_model_kv_override, ParamsError> {
    let bad = |reason| ParamsError::InvalidKvOverride {
        key: key.to_owned(),
        reason,
    };
    // SAFETY: llama_model_kv_override is plain data; all-zero is a valid value.
    let mut out: sys::llama_model_kv_override = unsafe { std::mem::zeroed() };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    copy_c_chars(key, &mut out.key).map_err(bad)?;
    match value {
        KvValue::Int(v) => {
            out.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
            out.__bindgen_anon_1.val_i64 = *v;
        }
        KvValue::Float(v) => {
            out.tag = sys::LLAMA_KV_OVERRIDE_TYPE_FLOAT;
            out.__bindgen_anon_1.val_f64 = *v;
        }
        KvValue::Bool(v) => {
            out.tag = sys::LLAMA_KV_OVERRIDE_TYPE_BOOL;
            out.__bindgen_anon_1.val_bool = *v;
        }
        KvValue::Str(s) => {
            out.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
            let mut buf = [0 as c_char; 128];
            copy_c_chars(s, &mut buf)
                .map_err(|_| bad("string value longer than 127 bytes or with NUL"))?;
            out.__bindgen_anon_1.val_str = buf;
        }
    }
    Ok(out)
}

/// Copies `s` into a fixed C char array, leaving room for the terminating NUL.
fn copy_c_chars(s: &str, dst: &mut [c_char]) -> Result<(), &'static str> {
    if s.len() >= dst.len() {
        return Err("longer than 127 bytes");
    }
    if s.as_bytes().contains(&0) {
        return Err("contains a NUL byte");
    }
    for (d, &b) in dst.iter_mut().zip(s.as_bytes()) {
        *d = b as c_char;
    }
    Ok(())
}

/// A `llama_model_params` whose pointers borrow from the [`ModelParams`] it came from
/// (pattern strings) and from the arrays it owns.
pub(crate) struct RawModelParams<'a> {
    pub(crate) raw: sys::llama_model_params,
    _overrides: Vec<sys::llama_model_tensor_buft_override>,
    _kv: Vec<sys::llama_model_kv_override>,
    _devices: Vec<sys::ggml_backend_dev_t>,
    _split: Vec<f32>,
    _owner: std::marker::PhantomData<&'a ModelParams>,
}

impl RawModelParams<'_> {
    /// Installs the progress trampoline with its per-load state.
    pub(crate) fn set_progress(
        &mut self,
        callback: sys::llama_progress_callback,
        user_data: *mut c_void,
    ) {
        self.raw.progress_callback = callback;
        self.raw.progress_callback_user_data = user_data;
    }

    /// The override array as C sees it, up to (not including) the terminator.
    #[cfg(test)]
    fn read_overrides(&self) -> Vec<(String, sys::ggml_backend_buffer_type_t)> {
        let mut out = Vec::new();
        let mut p = self.raw.tensor_buft_overrides;
        if p.is_null() {
            return out;
        }
        // SAFETY: walks the {NULL, NULL}-terminated array built in to_raw.
        unsafe {
            while !(*p).pattern.is_null() {
                let s = std::ffi::CStr::from_ptr((*p).pattern);
                out.push((s.to_string_lossy().into_owned(), (*p).buft));
                p = p.add(1);
            }
            assert!((*p).buft.is_null(), "terminator is {{NULL, NULL}}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> sys::ggml_backend_buffer_type_t {
        // SAFETY: ggml's static CPU buffer type.
        unsafe { sys::ggml_backend_cpu_buffer_type() }
    }

    #[test]
    fn cpu_moe_2_is_layers_0_and_1_then_the_terminator() {
        let backend = Backend::init();
        let params = ModelParams::default().with_cpu_moe(2);
        let raw = params.to_raw(&backend).unwrap();
        assert_eq!(
            raw.read_overrides(),
            vec![
                (
                    r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps".to_owned(),
                    cpu()
                ),
                (
                    r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps".to_owned(),
                    cpu()
                ),
            ]
        );
    }

    #[test]
    fn cpu_moe_all_is_one_entry() {
        let backend = Backend::init();
        let params = ModelParams::default().with_cpu_moe_all();
        let raw = params.to_raw(&backend).unwrap();
        assert_eq!(
            raw.read_overrides(),
            vec![(EXPERTS_REGEX.to_owned(), cpu())]
        );
    }

    #[test]
    fn no_overrides_means_a_null_array() {
        let backend = Backend::init();
        let params = ModelParams::default();
        let raw = params.to_raw(&backend).unwrap();
        assert!(raw.raw.tensor_buft_overrides.is_null());
        assert!(raw.raw.kv_overrides.is_null());
        assert!(raw.raw.devices.is_null());
        assert!(raw.raw.tensor_split.is_null());
    }

    #[test]
    fn explicit_overrides_come_first_in_call_order() {
        let backend = Backend::init();
        let params = ModelParams::default()
            .with_cpu_moe(1)
            .with_tensor_override("first", "CPU")
            .with_cpu_ffn(1)
            .with_tensor_override("second", OverrideTarget::Cpu)
            .with_cpu_moe_all();
        let raw = params.to_raw(&backend).unwrap();
        let patterns: Vec<String> = raw.read_overrides().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            patterns,
            vec![
                "first".to_owned(),
                "second".to_owned(),
                expert_layer_pattern(0),
                dense_ffn_layer_pattern(0),
                EXPERTS_REGEX.to_owned(),
            ]
        );
        let accessor: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
        assert_eq!(accessor, patterns);
    }

    #[test]
    fn layer_lists_keep_order_and_drop_duplicates() {
        let params = ModelParams::default().with_cpu_moe_layers([5, 3, 5, 4]);
        let layers: Vec<OverrideKind> = params.tensor_overrides().map(|o| o.kind()).collect();
        assert_eq!(
            layers,
            [5, 3, 4].map(|l| OverrideKind::Experts { layer: Some(l) })
        );
        assert_eq!(params.max_override_layer(), Some(5));
        assert!(params.has_expert_overrides());
        assert!(!ModelParams::default()
            .with_cpu_ffn(3)
            .has_expert_overrides());
    }

    #[test]
    fn the_raw_array_points_into_the_params_own_strings() {
        let backend = Backend::init();
        let params = ModelParams::default().with_tensor_override(r"blk\.7\.", "CPU");
        let raw = params.to_raw(&backend).unwrap();
        // SAFETY: the array has one entry before the terminator.
        let ptr = unsafe { (*raw.raw.tensor_buft_overrides).pattern };
        assert_eq!(ptr, params.explicit_overrides[0].pattern.as_ptr());
        // A clone owns its own copies.
        let clone = params.clone();
        assert_ne!(clone.explicit_overrides[0].pattern.as_ptr(), ptr);
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        let backend = Backend::init();
        let err = ModelParams::default()
            .with_tensor_override("((", "CPU")
            .validate(&backend)
            .unwrap_err();
        assert!(matches!(err, ParamsError::InvalidPattern { ref pattern, .. } if pattern == "(("));
        let err = ModelParams::default()
            .with_tensor_override("a\0b", "CPU")
            .validate(&backend)
            .unwrap_err();
        assert_eq!(
            err,
            ParamsError::NulInPattern {
                pattern: "a\\0b".into()
            }
        );
    }

    #[test]
    fn unknown_buffer_type_lists_the_available_ones() {
        let backend = Backend::init();
        let err = ModelParams::default()
            .with_tensor_override("x", "CUDA7")
            .validate(&backend)
            .unwrap_err();
        let ParamsError::UnknownBufferType(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.name, "CUDA7");
        assert!(e.available.iter().any(|n| n == "CPU"), "{:?}", e.available);
        assert!(e.to_string().contains("CPU"));
        // "CPU" itself resolves to ggml's CPU buffer type.
        let params = ModelParams::default().with_tensor_override("x", "CPU");
        assert_eq!(
            params.to_raw(&backend).unwrap().read_overrides()[0].1,
            cpu()
        );
    }

    #[test]
    fn too_many_overrides_is_an_error_not_an_allocation_storm() {
        let backend = Backend::init();
        let max = max_tensor_overrides();
        let at_limit = ModelParams::default().with_cpu_moe(max as u32);
        assert!(at_limit.validate(&backend).is_ok());
        let over = at_limit.with_tensor_override("one more", "CPU");
        assert_eq!(
            over.validate(&backend),
            Err(ParamsError::TooManyOverrides {
                count: max + 1,
                max
            })
        );
        let huge = ModelParams::default().with_cpu_moe(u32::MAX);
        assert_eq!(huge.tensor_overrides().count(), max);
        assert!(matches!(
            huge.validate(&backend),
            Err(ParamsError::TooManyOverrides { .. })
        ));
    }

    #[test]
    fn kv_overrides_are_copied_inline_and_terminated() {
        let backend = Backend::init();
        let params = ModelParams::default()
            .with_kv_override("a.int", KvValue::Int(-3))
            .with_kv_override("a.str", KvValue::Str("hello".into()));
        let raw = params.to_raw(&backend).unwrap();
        // SAFETY: two entries then an empty-key terminator, built in to_raw.
        unsafe {
            let p = raw.raw.kv_overrides;
            assert_eq!((*p).tag, sys::LLAMA_KV_OVERRIDE_TYPE_INT);
            assert_eq!((*p).__bindgen_anon_1.val_i64, -3);
            let key = std::ffi::CStr::from_ptr((*p.add(1)).key.as_ptr());
            assert_eq!(key.to_str().unwrap(), "a.str");
            let val = std::ffi::CStr::from_ptr((*p.add(1)).__bindgen_anon_1.val_str.as_ptr());
            assert_eq!(val.to_str().unwrap(), "hello");
            assert_eq!((*p.add(2)).key[0], 0);
        }
        let long = "k".repeat(128);
        assert!(matches!(
            ModelParams::default()
                .with_kv_override(long, KvValue::Bool(true))
                .validate(&backend),
            Err(ParamsError::InvalidKvOverride { .. })
        ));
    }

    #[test]
    fn devices_and_tensor_split_are_terminated_and_padded() {
        let backend = Backend::init();
        let cpu_dev = backend.cpu_device();
        let params = ModelParams::default()
            .with_devices([cpu_dev])
            .with_tensor_split([3.0, 1.0])
            .with_split_mode(SplitMode::Row)
            .with_load_mode(LoadMode::Read)
            .with_main_gpu(1);
        let raw = params.to_raw(&backend).unwrap();
        // SAFETY: one device then NULL; the split has llama_max_devices() entries.
        unsafe {
            assert_eq!(*raw.raw.devices, cpu_dev.as_ptr());
            assert!((*raw.raw.devices.add(1)).is_null());
            let split = std::slice::from_raw_parts(raw.raw.tensor_split, max_devices());
            assert_eq!(&split[..3], &[3.0, 1.0, 0.0]);
        }
        assert_eq!(raw.raw.split_mode, sys::LLAMA_SPLIT_MODE_ROW);
        assert_eq!(raw.raw.load_mode, sys::LLAMA_LOAD_MODE_NONE);
        assert_eq!(raw.raw.main_gpu, 1);
        let too_long = ModelParams::default().with_tensor_split(vec![1.0; max_devices() + 1]);
        assert!(matches!(
            too_long.validate(&backend),
            Err(ParamsError::TooManyDevices {
                what: "tensor_split",
                ..
            })
        ));
    }
}
