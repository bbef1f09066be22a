//! Loaded models, their load parameters and MoE tensor placement.

mod facts;
mod override_report;
mod params;
mod placement;
mod precheck;
mod split;

use std::any::Any;
use std::borrow::Cow;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use llama_cpp_moe_gguf::GgufError;
use llama_cpp_moe_sys as sys;

pub use facts::{FileType, RopeType, SamplingKey};
pub use override_report::{OverrideMatch, OverrideReport};
pub(crate) use params::kv_override;
pub use params::{
    dense_ffn_layer_pattern, expert_layer_pattern, max_devices, max_tensor_overrides, regex_search,
    KvValue, LoadMode, ModelParams, OverrideKind, OverrideTarget, ParamsError, SplitMode,
    TensorOverride, DENSE_FFN_REGEX, EXPERTS_REGEX,
};
pub use placement::{is_routed_expert, Placement, TensorPlacement, TensorTotals};
pub(crate) use precheck::check_gguf;
pub use split::{split_path, split_prefix, SplitPathError};
// The dry run lives beside the planner, its main user (it builds a context, which nothing
// else in `model` does); its names stay here too, where they were first published.
pub use crate::plan::{bytes_by_location, DryRun, DryRunError, MemoryBytes, MemoryLocation};

use crate::backend::{BufferType, Device};
use crate::error::PathError;
use crate::ffi::{fill_growing, path_to_cstring, str_from_c, string_from_c, Fill};
use crate::Backend;
use crate::GgmlType;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist.
    #[error("model file not found: {0}")]
    NotFound(PathBuf),
    /// The path cannot be passed to C: it contains a NUL byte, or (outside Unix) it is
    /// not valid Unicode.
    #[error("invalid model path: {0}")]
    InvalidPath(PathError),
    /// The params were rejected before llama.cpp saw them.
    #[error(transparent)]
    InvalidParams(#[from] ParamsError),
    /// The progress callback returned `false`.
    #[error("loading {0} was aborted by the progress callback")]
    Aborted(PathBuf),
    /// The file does not start with the GGUF magic (found before llama.cpp opened it).
    #[error("{}: not a GGUF file (it starts with {magic:02x?})", path.display())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// Its first bytes (up to 4).
        magic: Vec<u8>,
    },
    /// A GGUF version llama.cpp cannot read (found before llama.cpp opened it).
    #[error("{}: GGUF version {version} is not supported (llama.cpp reads 2 and 3)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        version: u32,
    },
    /// The file ends inside a tensor's data: a truncated download or copy, or a tensor
    /// table that declares more data than there is.
    #[error(
        "{}: truncated: tensor {tensor:?} needs bytes {start}..{end} but the file has \
         {file_size} bytes ({} bytes missing)",
        path.display(), end.saturating_sub(*file_size)
    )]
    TruncatedData {
        /// The file.
        path: PathBuf,
        /// The first tensor whose data is incomplete.
        tensor: String,
        /// First byte of its data.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A tensor's offset is not where its data must start (ggml stores tensors back to
    /// back, in table order): a damaged or forged tensor table.
    #[error(
        "{}: tensor {tensor:?} claims data offset {offset}, but its data must start at \
         offset {expected}",
        path.display()
    )]
    TensorOffsetMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The offset in the tensor table, relative to the data section.
        offset: u64,
        /// Where its data must start, relative to the data section.
        expected: u64,
    },
    /// A tensor's type id is not a ggml type this build knows.
    #[error("{}: tensor {tensor:?} has unknown ggml type {type_id}", path.display())]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// Metadata that is well-formed GGUF but that llama.cpp's loader asserts on, which
    /// would abort the whole process (a vocabulary with the same token twice; layer or
    /// expert counts out of llama.cpp's range, e.g. an MoE model that routes each token
    /// to zero experts or to more experts than it has).
    #[error("{}: {reason} (llama.cpp would abort the process on it)", path.display())]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Any other damage the GGUF check found in the header, metadata or tensor table
    /// (a truncated header, an impossible length or count, a bad alignment, ...).
    #[error(transparent)]
    InvalidGguf(GgufError),
    /// llama.cpp refused a file our GGUF check accepted; `reason` is its own error
    /// lines ("; "-joined) when it logged any.
    #[error("llama.cpp failed to load {path}: {reason}")]
    Failed {
        /// The file that failed.
        path: PathBuf,
        /// llama.cpp's error lines, or a generic message.
        reason: String,
    },
}

/// A model loaded by llama.cpp. Contexts borrow it: see [`crate::Context`].
#[derive(Debug)]
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    /// The kv overrides it was loaded with: llama.cpp applies them to its
    /// hyper-parameters but its metadata accessors still show the file's values.
    kv_overrides: Vec<(String, KvValue)>,
    /// What each tensor override matched, computed once after the load.
    override_report: OverrideReport,
    /// Set when the load left the weights out: no context may run on the model.
    weightless: Option<crate::context::WeightlessModel>,
}

// SAFETY: llama.cpp treats a loaded llama_model as immutable; contexts only read its
// weights and vocab, and llama-server shares one model across threads the same way.
unsafe impl Send for Model {}
// SAFETY: every &self method only reads the model through llama.cpp's const accessors.
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) };
    }
}

/// Per-load state the progress trampoline reaches through `user_data`.
struct ProgressState<'a> {
    callback: &'a Mutex<Box<dyn FnMut(f32) -> bool + Send>>,
    aborted: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

unsafe extern "C" fn progress_trampoline(progress: f32, user_data: *mut c_void) -> bool {
    // SAFETY: user_data is the &ProgressState that Model::load keeps alive across the
    // llama_model_load_from_file call; only shared references are formed.
    let state = unsafe { &*(user_data as *const ProgressState<'_>) };
    let mut panic = state.panic.lock().unwrap_or_else(|e| e.into_inner());
    if panic.is_some() {
        return false;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut cb = state.callback.lock().unwrap_or_else(|e| e.into_inner());
        cb(progress)
    }));
    match result {
        Ok(true) => true,
        Ok(false) => {
            state.aborted.store(true, Ordering::Relaxed);
            false
        }
        Err(payload) => {
            // Unwinding into C++ is undefined; stop the load and rethrow afterwards.
            *panic = Some(payload);
            false
        }
    }
}

impl Model {
    /// Loads a GGUF model.
    ///
    /// The params are validated first ([`ModelParams::validate`]); llama.cpp never sees
    /// an invalid pattern, an unknown buffer type or an over-long array. After a
    /// successful load, `log::warn!` (target `llama_cpp_moe`) reports MoE options that
    /// moved nothing: expert overrides on a model without experts, and layer indices
    /// beyond the model's layer count.
    ///
    /// C equivalent: `llama_model_load_from_file(path, params)`.
    ///
    /// ```no_run
    /// use llama_cpp_moe::{Backend, Model, ModelParams};
    /// # fn main() -> llama_cpp_moe::Result<()> {
    /// let backend = Backend::init();
    /// let params = ModelParams::default().with_n_gpu_layers(99).with_cpu_moe(10);
    /// let model = Model::load(&backend, "qwen3-30b-a3b-q4_k_m.gguf", &params)?;
    /// let on_host = model.placement().experts_on_host();
    /// println!("{} expert tensors ({} MiB) stay in RAM", on_host.count, on_host.bytes >> 20);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`LoadError`]: the file is missing, the params are invalid, our GGUF check found
    /// the file damaged (bad magic, unsupported version, truncated data, a tensor out of
    /// bounds or of an unknown type, or another header error), the progress callback
    /// aborted, or llama.cpp failed (with its own error line).
    ///
    /// # Panics
    /// Resumes a panic raised inside the progress callback, after llama.cpp returned.
    pub fn load(
        backend: &Backend,
        path: impl AsRef<Path>,
        params: &ModelParams,
    ) -> Result<Model, LoadError> {
        let path = path.as_ref();
        let c_path = path_to_cstring(path).map_err(LoadError::InvalidPath)?;
        if !path.exists() {
            return Err(LoadError::NotFound(path.to_owned()));
        }
        precheck::check_gguf(path, params.kv_overrides())?;
        let mut raw = params.to_raw(backend)?;
        let state = params.progress_callback().map(|cb| ProgressState {
            callback: cb,
            aborted: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        if let Some(state) = &state {
            raw.set_progress(
                Some(progress_trampoline),
                state as *const ProgressState<'_> as *mut c_void,
            );
        }
        crate::logging::clear_last_error();
        // SAFETY: c_path is NUL-terminated. raw.raw's pointers (the tensor and kv
        // override arrays and the device list in `raw`, the patterns in `params`) and the
        // progress user_data (`state`) are valid for this call, and dangle after it. The
        // returned llama_model keeps `params` by value with those pointers in it
        // (src/llama-model.h; only tensor_split is copied, by its constructor). That is
        // sound only because the pinned llama.cpp reads them during the load alone
        // (device selection, the loader, the constructor, load_tensors), which
        // tests/model_params_pointers.rs checks against the pinned source.
        let ptr = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), raw.raw) };
        let reason = crate::logging::take_last_error();
        let ptr = NonNull::new(ptr);
        if let Some(state) = state {
            if let Some(payload) = state.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
                if let Some(p) = ptr {
                    // SAFETY: a model we own and never hand out.
                    unsafe { sys::llama_model_free(p.as_ptr()) };
                }
                resume_unwind(payload);
            }
            if ptr.is_none() && state.aborted.load(Ordering::Relaxed) {
                return Err(LoadError::Aborted(path.to_owned()));
            }
        }
        let ptr = ptr.ok_or_else(|| LoadError::Failed {
            path: path.to_owned(),
            reason: reason.unwrap_or_else(|| "llama_model_load_from_file returned NULL".into()),
        })?;
        let mut model = Model {
            ptr,
            kv_overrides: params.kv_overrides().to_vec(),
            override_report: OverrideReport::default(),
            weightless: if params.vocab_only() {
                Some(crate::context::WeightlessModel::VocabOnly)
            } else if params.no_alloc {
                Some(crate::context::WeightlessModel::NoAlloc)
            } else {
                None
            },
        };
        model.warn_about_unused_moe_options(params);
        model.report_overrides(params);
        Ok(model)
    }

    fn warn_about_unused_moe_options(&self, params: &ModelParams) {
        if params.vocab_only() {
            return;
        }
        if params.has_expert_overrides() && self.n_expert() == 0 {
            log::warn!(
                target: "llama_cpp_moe",
                "MoE offload options have no effect: this {} model has no experts \
                 (0 expert tensors moved)",
                self.arch().unwrap_or_default()
            );
        }
        if let Some(max) = params.max_override_layer() {
            let n_layer = self.n_layer();
            if max >= n_layer {
                log::warn!(
                    target: "llama_cpp_moe",
                    "MoE/FFN offload names layers up to {max}, but the model has {n_layer} \
                     layers; layers {n_layer}..={max} do not exist and were ignored"
                );
            }
        }
    }

    /// Matches every tensor override against the loaded tensors and warns about explicit
    /// patterns that matched none.
    fn report_overrides(&mut self, params: &ModelParams) {
        if params.vocab_only() || params.tensor_overrides().next().is_none() {
            return;
        }
        let placement = self.placement();
        self.override_report = OverrideReport::build(params, &placement);
        self.override_report.warn_unused(&placement);
    }

    /// What each tensor override of the load params did: the tensors it matched (first
    /// match wins, as in llama.cpp's loader), their bytes and the buffer types they went
    /// to. Empty when the model was loaded without overrides.
    ///
    /// ```no_run
    /// # use llama_cpp_moe::{Backend, Model, ModelParams};
    /// # let backend = Backend::init();
    /// let params = ModelParams::default().with_tensor_override(r"ffn_upp_exps", "CPU");
    /// let model = Model::load(&backend, "m.gguf", &params).unwrap(); // logs a warning
    /// for o in &model.override_report().overrides {
    ///     println!("{} -> {}: {} tensors, {} bytes", o.pattern, o.target, o.tensors.len(), o.bytes);
    /// }
    /// ```
    pub fn override_report(&self) -> &OverrideReport {
        &self.override_report
    }

    /// The devices llama.cpp offloads this model to, in its order: the params' own list
    /// ([`ModelParams::with_devices`]), or llama.cpp's default selection: RPC servers
    /// first, then GPUs, integrated GPUs only when there is no discrete one, never
    /// accelerators (BLAS, AMX); with [`SplitMode::None`] only the main GPU, or none
    /// when it is negative. The CPU is not listed. With [`SplitMode::Tensor`] the list
    /// is the one meta device llama.cpp made of them.
    ///
    /// C equivalent: `model->devices` (`llama_model_n_devices` / `llama_model_get_device`
    /// in llama.cpp's `src/llama-ext.h`).
    pub fn devices(&self) -> Vec<Device> {
        // SAFETY: valid model; the shim catches C++ exceptions.
        let n = unsafe { sys::llama_moe_model_n_devices(self.as_ptr()) };
        (0..n)
            .filter_map(|i| {
                // SAFETY: valid model; out-of-range indices give NULL.
                let dev = unsafe { sys::llama_moe_model_device(self.as_ptr(), i) };
                // SAFETY: the device is one of ggml's registry, or a meta device ggml
                // keeps in a static table: either lives until the process exits.
                NonNull::new(dev).map(|p| unsafe { Device::from_raw(p) })
            })
            .collect()
    }

    /// Whether the model was loaded without its weights (vocab-only or `no_alloc`).
    pub(crate) fn weightless(&self) -> Option<crate::context::WeightlessModel> {
        self.weightless
    }

    /// An integer metadata value as llama.cpp's loader read it: the kv override the
    /// model was loaded with, else the file's value.
    pub(crate) fn meta_int(&self, key: &str) -> Option<i64> {
        let overridden = self.kv_overrides.iter().find_map(|(k, v)| match v {
            KvValue::Int(n) if k == key => Some(*n),
            _ => None,
        });
        overridden.or_else(|| self.meta_val(key).and_then(|v| v.trim().parse().ok()))
    }

    /// The raw pointer, for calls this crate does not wrap yet. Valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// Number of transformer layers.
    pub fn n_layer(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Width of the residual stream (embedding length).
    pub fn n_embd(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> u32 {
        // SAFETY: valid model pointer; the vocab lives as long as the model.
        let n = unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(self.as_ptr())) };
        n.max(0) as u32
    }

    /// Training context length.
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Total number of parameters.
    pub fn n_params(&self) -> u64 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_params(self.ptr.as_ptr()) }
    }

    /// Total size of all tensors in bytes.
    pub fn size(&self) -> u64 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_size(self.ptr.as_ptr()) }
    }

    /// Experts per MoE layer (0 for a dense model).
    pub fn n_expert(&self) -> u32 {
        // SAFETY: valid model pointer; the shim catches C++ exceptions.
        unsafe { sys::llama_moe_model_n_expert(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Experts each token is routed to (`{arch}.expert_used_count`, or the kv override
    /// the model was loaded with; 0 for dense).
    pub fn n_expert_used(&self) -> u32 {
        let Some(arch) = self.arch() else { return 0 };
        let key = format!("{arch}.expert_used_count");
        let overridden = self.kv_overrides.iter().find_map(|(k, v)| match v {
            KvValue::Int(n) if *k == key => u32::try_from(*n).ok(),
            _ => None,
        });
        overridden
            .or_else(|| self.meta_val(&key).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// The architecture name (`general.architecture`, e.g. `"qwen3moe"`).
    pub fn arch(&self) -> Option<String> {
        self.meta_val("general.architecture")
    }

    /// A metadata value as stored in the file, rendered as a string by llama.cpp (arrays
    /// are not supported; kv overrides given at load time are not reflected here).
    pub fn meta_val(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        read_c_string(|buf, len| {
            // SAFETY: valid model; key is NUL-terminated; buf is writable for len bytes.
            unsafe { sys::llama_model_meta_val_str(self.as_ptr(), key.as_ptr(), buf, len) }
        })
    }

    /// Every scalar metadata entry as `(key, value)` strings, in file order.
    pub fn metadata(&self) -> Vec<(String, String)> {
        // SAFETY: valid model pointer.
        let n = unsafe { sys::llama_model_meta_count(self.as_ptr()) };
        (0..n)
            .filter_map(|i| {
                let key = read_c_string(|buf, len| {
                    // SAFETY: i < count; buf is writable for len bytes.
                    unsafe { sys::llama_model_meta_key_by_index(self.as_ptr(), i, buf, len) }
                })?;
                let val = read_c_string(|buf, len| {
                    // SAFETY: as above.
                    unsafe { sys::llama_model_meta_val_str_by_index(self.as_ptr(), i, buf, len) }
                })
                .unwrap_or_default();
                Some((key, val))
            })
            .collect()
    }

    /// The chat template stored in the file: the default one for `None`, or a named
    /// one (`tokenizer.chat_template.NAME`).
    pub fn chat_template(&self, name: Option<&str>) -> Option<String> {
        let name = match name {
            Some(n) => Some(CString::new(n).ok()?),
            None => None,
        };
        let name_ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: valid model; name is NULL or NUL-terminated; the returned string is
        // NULL or NUL-terminated and owned by the model, which outlives this call.
        unsafe { str_from_c(sys::llama_model_chat_template(self.as_ptr(), name_ptr)) }
            .map(Cow::into_owned)
    }

    /// llama.cpp's one-line description (`"qwen3moe A3B Q8_0"` style).
    pub fn description(&self) -> String {
        read_c_string(|buf, len| {
            // SAFETY: valid model; buf is writable for len bytes.
            unsafe { sys::llama_model_desc(self.as_ptr(), buf, len) }
        })
        .unwrap_or_default()
    }

    /// Where each tensor was allocated: name, bytes, buffer type, and whether it is a
    /// routed expert (classified with llama.cpp's own expert regex), with totals per
    /// buffer type and [`Placement::experts_on_host`].
    ///
    /// ```no_run
    /// # use llama_cpp_moe::{Backend, Model, ModelParams};
    /// # let backend = Backend::init();
    /// # let model = Model::load(&backend, "m.gguf", &ModelParams::default().with_cpu_moe_all()).unwrap();
    /// for (buft, totals) in model.placement().totals() {
    ///     println!("{buft}: {} tensors, {} bytes", totals.count, totals.bytes);
    /// }
    /// ```
    pub fn placement(&self) -> Placement {
        // SAFETY: valid model; the shim catches C++ exceptions.
        let n = unsafe { sys::llama_moe_model_n_tensors(self.as_ptr()) };
        let mut tensors = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: plain C struct; all-zero is a valid (empty) value.
            let mut info: sys::llama_moe_tensor_info = unsafe { std::mem::zeroed() };
            // SAFETY: i < n; info is a valid out-pointer.
            if unsafe { sys::llama_moe_model_tensor_info(self.as_ptr(), i, &mut info) } != 0 {
                continue;
            }
            // SAFETY: the shim returns NULL or a NUL-terminated name owned by the model,
            // alive here.
            let name = unsafe { string_from_c(info.name) };
            // SAFETY: the shim hands out the tensor buffer's type, a process-lived ggml
            // object (static, or owned by a backend registry that is never freed).
            let buffer_type = NonNull::new(info.buft).map(|p| unsafe { BufferType::from_raw(p) });
            tensors.push(TensorPlacement {
                routed_expert: is_routed_expert(&name),
                // Repacked CPU weights (CPU_REPACK) are not "host" in ggml's sense (their
                // layout is private) but they are in host RAM, which is what counts here.
                on_host: info.is_host != 0 || info.on_cpu_device != 0,
                name,
                bytes: info.nbytes,
                buffer_type,
                ggml_type: u32::try_from(info.ggml_type)
                    .ok()
                    .and_then(GgmlType::from_raw),
            });
        }
        Placement { tensors }
    }
}

/// Calls an `snprintf`-style llama.cpp getter, growing the buffer until the value fits;
/// `None` when the getter reports no value (a negative return).
fn read_c_string(mut get: impl FnMut(*mut c_char, usize) -> i32) -> Option<String> {
    let bytes = fill_growing(
        256,
        |buf: &mut [u8]| {
            Fill::from_snprintf(get(buf.as_mut_ptr().cast(), buf.len()), buf.len()).ok_or(())
        },
        || (),
    )
    .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
