//! LoRA adapters and control vectors.
//!
//! A [`LoraAdapter`] borrows the [`Model`] it was loaded for, and a [`Context`] only
//! takes adapters that outlive it, so neither can dangle: the adapter cannot be
//! dropped while a context may still run it.
//!
//! ```compile_fail,E0597
//! use llama_cpp_moe::{adapter::LoraAdapter, Backend, Context, ContextParams, Model, ModelParams};
//! let model = Model::load(&Backend::init(), "m.gguf", &ModelParams::default()).unwrap();
//! let mut ctx = Context::new(&model, &ContextParams::default()).unwrap();
//! {
//!     let lora = LoraAdapter::load(&model, "lora.gguf").unwrap();
//!     ctx.set_lora_adapters(&[(&lora, 1.0)]).unwrap();
//! } // error[E0597]: `lora` does not live long enough
//! drop(ctx);
//! ```
//!
//! Declared before the context, the same code compiles:
//!
//! ```no_run
//! use llama_cpp_moe::{adapter::LoraAdapter, Backend, Context, ContextParams, Model, ModelParams};
//! # fn main() -> llama_cpp_moe::Result<()> {
//! let model = Model::load(&Backend::init(), "m.gguf", &ModelParams::default())?;
//! let lora = LoraAdapter::load(&model, "lora.gguf")?;
//! let mut ctx = Context::new(&model, &ContextParams::default())?;
//! ctx.set_lora_adapters(&[(&lora, 0.8)])?; // --lora-scaled lora.gguf 0.8
//! // ... decode with the adapter ...
//! ctx.clear_lora_adapters(); // back to the base model
//! # Ok(())
//! # }
//! ```

use std::ffi::{c_char, CString};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use llama_cpp_moe_gguf::{GgmlType, GgufError, GgufFile, MetaArray, MetaValue, TensorKind};
use llama_cpp_moe_sys as sys;

use crate::context::Context;
use crate::error::PathError;
use crate::ffi::{fill_growing, path_to_cstring, Fill};
use crate::vocab::Token;
use crate::Model;

/// llama.cpp keeps a model's loaded adapters in a set on the model that every context
/// of that model reads when it reserves its compute graphs (`graph_max_nodes`, at
/// creation and in a decode after a change). Loading or freeing an adapter writes that
/// set, so it must not run while any context reads it: loads and frees take this lock
/// for writing, context creation and decodes for reading.
static MODEL_ADAPTERS: RwLock<()> = RwLock::new(());

/// Held while llama.cpp may read a model's adapter set (context creation, decode). An
/// abort callback must therefore not load or drop an adapter: it runs inside a decode.
pub(crate) fn reading_adapters() -> RwLockReadGuard<'static, ()> {
    MODEL_ADAPTERS.read().unwrap_or_else(|e| e.into_inner())
}

fn writing_adapters() -> RwLockWriteGuard<'static, ()> {
    MODEL_ADAPTERS.write().unwrap_or_else(|e| e.into_inner())
}

/// Why a LoRA adapter could not be loaded or applied, or a control vector applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The path cannot be handed to C.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The file is missing or not a readable GGUF file.
    #[error(transparent)]
    InvalidGguf(#[from] GgufError),
    /// The file is a GGUF file but not a LoRA adapter llama.cpp can load: a missing or
    /// mistyped key (llama.cpp would abort reading a key of the wrong type).
    #[error("{} is not a LoRA adapter: {reason}", path.display())]
    NotAnAdapter {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The adapter was made for another architecture.
    #[error("{} is a LoRA adapter for {adapter:?}, the model is {model:?}", path.display())]
    WrongArch {
        /// The file.
        path: PathBuf,
        /// The adapter's `general.architecture`.
        adapter: String,
        /// The model's.
        model: String,
    },
    /// A LoRA tensor does not fit the model (shape, rank, a base tensor that does not
    /// exist, an unpaired `lora_a`/`lora_b`).
    #[error("{}: LoRA tensor {tensor:?}: {reason}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor (without its `.lora_a`/`.lora_b` suffix where it is about the pair).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// llama.cpp refused the adapter; `reason` is its error line.
    #[error("llama.cpp could not load the LoRA adapter {}: {reason}", path.display())]
    Failed {
        /// The file.
        path: PathBuf,
        /// llama.cpp's error lines.
        reason: String,
    },
    /// The adapter belongs to another model than the context's.
    #[error("the LoRA adapter was loaded for another model than the context's")]
    OtherModel,
    /// A scale is not finite.
    #[error("LoRA scale {0} is not finite")]
    BadScale(f32),
    /// A control vector's data or layer range does not fit the model.
    #[error("control vector: {0}")]
    ControlVector(String),
}

/// A LoRA adapter loaded for a [`Model`] (`llama_adapter_lora`); apply it to contexts
/// with [`Context::set_lora_adapters`]. It borrows the model, and contexts borrow it.
pub struct LoraAdapter<'model> {
    ptr: NonNull<sys::llama_adapter_lora>,
    model: &'model Model,
}

impl std::fmt::Debug for LoraAdapter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("ptr", &self.ptr)
            .field("alpha", &self.alpha())
            .finish_non_exhaustive()
    }
}

// SAFETY: after loading, llama.cpp only reads an adapter (metadata, tensors, invocation
// tokens); the one write, freeing it (which also edits the model's adapter set), happens
// under `MODEL_ADAPTERS`' write lock, from whichever thread drops it.
unsafe impl Send for LoraAdapter<'_> {}
// SAFETY: every `&self` method only reads the adapter's immutable data.
unsafe impl Sync for LoraAdapter<'_> {}

impl Drop for LoraAdapter<'_> {
    fn drop(&mut self) {
        let _lock = writing_adapters();
        // SAFETY: the pointer came from llama_adapter_lora_init and is freed once, while
        // the model it belongs to is alive (borrowed for 'model); no context uses it any
        // more (contexts borrow the adapter). The write lock keeps contexts of the model
        // from reading its adapter set meanwhile.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) };
    }
}

/// A string-valued key, or why not.
fn string_key<'a>(file: &'a GgufFile, key: &str) -> Result<&'a str, String> {
    match file.get(key) {
        Some(MetaValue::String(s)) => Ok(s),
        Some(other) => Err(format!("{key} is not a string ({other:?})")),
        None => Err(format!("{key} is missing")),
    }
}

/// Checks what llama.cpp would abort on, or could only refuse vaguely: key types, the
/// architecture, tensor names, dimensions and ranks.
fn precheck(path: &Path, model: &Model) -> Result<(), AdapterError> {
    let file = GgufFile::open(path)?;
    let not_adapter = |reason: String| AdapterError::NotAnAdapter {
        path: path.to_owned(),
        reason,
    };
    let general_type = string_key(&file, "general.type").map_err(not_adapter)?;
    if general_type != "adapter" {
        return Err(not_adapter(format!(
            "general.type is {general_type:?}, not \"adapter\""
        )));
    }
    let adapter_type = string_key(&file, "adapter.type").map_err(not_adapter)?;
    if adapter_type != "lora" {
        return Err(not_adapter(format!(
            "adapter.type is {adapter_type:?}, not \"lora\""
        )));
    }
    let arch = string_key(&file, "general.architecture").map_err(not_adapter)?;
    let model_arch = model.arch().unwrap_or_default();
    if arch != model_arch {
        return Err(AdapterError::WrongArch {
            path: path.to_owned(),
            adapter: arch.to_owned(),
            model: model_arch,
        });
    }
    match file.get("adapter.lora.alpha") {
        None | Some(MetaValue::F32(_)) => {}
        Some(other) => {
            return Err(not_adapter(format!(
                "adapter.lora.alpha is not an f32 ({other:?})"
            )))
        }
    }
    match file.get("adapter.alora.invocation_tokens") {
        None | Some(MetaValue::Array(MetaArray::U32(_))) => {}
        Some(other) => {
            return Err(not_adapter(format!(
                "adapter.alora.invocation_tokens is not an array of u32 ({other:?})"
            )))
        }
    }
    let bad = |tensor: &str, reason: String| AdapterError::BadTensor {
        path: path.to_owned(),
        tensor: tensor.to_owned(),
        reason,
    };
    for t in file.tensors() {
        let Some(base) = t
            .name
            .strip_suffix(".lora_a")
            .or_else(|| t.name.strip_suffix(".lora_b"))
        else {
            continue; // llama.cpp skips norms and refuses other names itself
        };
        // ggml multiplies by these; integer types have no matmul kernel (it aborts).
        const TYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];
        if !TYPES.contains(&t.ty) {
            return Err(bad(
                &t.name,
                format!("type {}; LoRA tensors are f32, f16, bf16 or q8_0", t.ty),
            ));
        }
        if t.shape.len() > 2 {
            return Err(bad(
                &t.name,
                format!("{} dimensions; LoRA tensors have 2", t.shape.len()),
            ));
        }
        if TensorKind::of(base) == TensorKind::RoutedExpert {
            return Err(bad(
                &t.name,
                "LoRA on routed expert tensors is not supported".into(),
            ));
        }
        if t.name.ends_with(".lora_b") {
            continue;
        }
        let (a, b) = (t, file.tensor(&format!("{base}.lora_b")));
        let Some(b) = b else {
            continue; // llama.cpp names the missing half
        };
        let dim = |s: &[u64], i: usize| s.get(i).copied().unwrap_or(1);
        // The rank is a's second dimension and b's first, except for the token
        // embedding, whose pair is used the other way round (rows of a are gathered).
        let (rank_a, rank_b) = if base.ends_with("token_embd.weight") {
            (dim(&a.shape, 0), dim(&b.shape, 0))
        } else {
            (dim(&a.shape, 1), dim(&b.shape, 0))
        };
        if rank_a != rank_b {
            return Err(bad(
                base,
                format!(
                    "rank {rank_a} in lora_a {:?} but {rank_b} in lora_b {:?}",
                    a.shape, b.shape
                ),
            ));
        }
    }
    Ok(())
}

fn read_string(mut get: impl FnMut(*mut c_char, usize) -> i32) -> Option<String> {
    let bytes = fill_growing(
        128,
        |buf: &mut [u8]| {
            Fill::from_snprintf(get(buf.as_mut_ptr().cast(), buf.len()), buf.len()).ok_or(())
        },
        || (),
    )
    .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

impl<'model> LoraAdapter<'model> {
    /// Loads a LoRA adapter (a GGUF file with `general.type = "adapter"`,
    /// `adapter.type = "lora"`) for `model`.
    ///
    /// C equivalent: `llama_adapter_lora_init(model, path)`.
    ///
    /// # Errors
    /// [`AdapterError`]: an unreadable file, a file that is not a LoRA adapter of the
    /// model's architecture, tensors that do not fit the model, or llama.cpp's refusal.
    pub fn load(model: &'model Model, path: impl AsRef<Path>) -> Result<Self, AdapterError> {
        let path = path.as_ref();
        let c_path = path_to_cstring(path)?;
        precheck(path, model)?;
        let _lock = writing_adapters();
        crate::logging::clear_last_error();
        // SAFETY: valid model; NUL-terminated path; the keys llama.cpp reads with typed
        // getters (which abort on another type) were checked above; its exceptions are
        // caught inside the call. The write lock covers its insert into the model's
        // adapter set.
        let ptr = unsafe { sys::llama_adapter_lora_init(model.as_ptr(), c_path.as_ptr()) };
        let reason = crate::logging::take_last_error();
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            let reason = reason.unwrap_or_else(|| "llama_adapter_lora_init returned NULL".into());
            // Name llama.cpp's tensor refusals as such.
            match reason.split('\'').nth(1) {
                Some(tensor) if reason.contains("tensor") && !reason.contains("failed to open") => {
                    AdapterError::BadTensor {
                        path: path.to_owned(),
                        tensor: tensor.to_owned(),
                        reason,
                    }
                }
                _ => AdapterError::Failed {
                    path: path.to_owned(),
                    reason,
                },
            }
        })?;
        Ok(LoraAdapter { ptr, model })
    }

    /// The model the adapter was loaded for.
    pub fn model(&self) -> &'model Model {
        self.model
    }

    /// The raw pointer, for calls this crate does not wrap. Valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::llama_adapter_lora {
        self.ptr.as_ptr()
    }

    /// A scalar metadata value of the adapter file, as llama.cpp renders it.
    ///
    /// C equivalent: `llama_adapter_meta_val_str(adapter, key, buf, len)`.
    pub fn meta_val(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        read_string(|buf, len| {
            // SAFETY: valid adapter; NUL-terminated key; buf is writable for len bytes.
            unsafe { sys::llama_adapter_meta_val_str(self.ptr.as_ptr(), key.as_ptr(), buf, len) }
        })
    }

    /// Every scalar metadata entry as `(key, value)` strings (in llama.cpp's map order,
    /// not the file's).
    ///
    /// C equivalent: `llama_adapter_meta_count`, `llama_adapter_meta_key_by_index`,
    /// `llama_adapter_meta_val_str_by_index`.
    pub fn metadata(&self) -> Vec<(String, String)> {
        // SAFETY: valid adapter.
        let n = unsafe { sys::llama_adapter_meta_count(self.ptr.as_ptr()) };
        (0..n)
            .filter_map(|i| {
                let key = read_string(|buf, len| {
                    // SAFETY: valid adapter; i < count; buf is writable for len bytes.
                    unsafe { sys::llama_adapter_meta_key_by_index(self.ptr.as_ptr(), i, buf, len) }
                })?;
                let val = read_string(|buf, len| {
                    // SAFETY: as above.
                    unsafe {
                        sys::llama_adapter_meta_val_str_by_index(self.ptr.as_ptr(), i, buf, len)
                    }
                })
                .unwrap_or_default();
                Some((key, val))
            })
            .collect()
    }

    /// `adapter.lora.alpha`, when the file has it. llama.cpp scales the adapter by
    /// `scale * alpha / rank` (by `scale` alone without alpha).
    pub fn alpha(&self) -> Option<f32> {
        self.meta_val("adapter.lora.alpha")?.trim().parse().ok()
    }

    /// The invocation tokens of an activated LoRA (aLoRA): the adapter applies from
    /// where this sequence appears in the prompt. Empty for a plain LoRA.
    ///
    /// C equivalent: `llama_adapter_get_alora_n_invocation_tokens` and
    /// `llama_adapter_get_alora_invocation_tokens`.
    pub fn alora_invocation_tokens(&self) -> &[Token] {
        // SAFETY: valid adapter.
        let n = unsafe { sys::llama_adapter_get_alora_n_invocation_tokens(self.ptr.as_ptr()) };
        if n == 0 {
            return &[];
        }
        // SAFETY: valid adapter; the tokens live in the adapter, unchanged until it is
        // freed, so they outlive this borrow of it.
        let p = unsafe { sys::llama_adapter_get_alora_invocation_tokens(self.ptr.as_ptr()) };
        if p.is_null() {
            return &[];
        }
        // SAFETY: `n` tokens at `p` (a std::vector's data); `Token` is
        // `repr(transparent)` over `llama_token`.
        unsafe { std::slice::from_raw_parts(p.cast::<Token>(), n as usize) }
    }
}

impl<'model> Context<'model> {
    /// Runs the context with these LoRA adapters, each scaled (`1.0` = as trained; a
    /// zero scale leaves it out), in place of the ones set before. Each adapter must
    /// outlive the context.
    ///
    /// C equivalent: `llama_set_adapters_lora(ctx, adapters, n, scales)`
    /// (`--lora-scaled FILE SCALE`).
    ///
    /// # Errors
    /// [`AdapterError::OtherModel`] for an adapter of another model,
    /// [`AdapterError::BadScale`] for a scale that is not finite; nothing changes then.
    pub fn set_lora_adapters(
        &mut self,
        adapters: &[(&'model LoraAdapter<'model>, f32)],
    ) -> Result<(), AdapterError> {
        let mut ptrs = Vec::with_capacity(adapters.len());
        let mut scales = Vec::with_capacity(adapters.len());
        for &(adapter, scale) in adapters {
            if !std::ptr::eq(adapter.model, self.model()) {
                return Err(AdapterError::OtherModel);
            }
            if !scale.is_finite() {
                return Err(AdapterError::BadScale(scale));
            }
            ptrs.push(adapter.ptr.as_ptr());
            scales.push(scale);
        }
        // SAFETY: valid context; `ptrs` and `scales` hold `n` entries each (llama.cpp
        // copies them); every adapter belongs to this context's model and outlives the
        // context ('model), so the context never holds a freed adapter.
        unsafe {
            sys::llama_set_adapters_lora(
                self.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// Runs the context without LoRA adapters again.
    ///
    /// C equivalent: `llama_set_adapters_lora(ctx, NULL, 0, NULL)`.
    pub fn clear_lora_adapters(&mut self) {
        // SAFETY: valid context; NULL lists with a count of 0 are the documented way to
        // remove every adapter.
        unsafe {
            sys::llama_set_adapters_lora(
                self.as_ptr(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            )
        };
    }

    /// Adds `data`, one row of `n_embd` floats per layer from layer 1 on, to the
    /// output of the layers in `layers` (a control vector, as llama.cpp's
    /// `--control-vector`). Layer 0 never gets one. `data` may cover fewer layers than
    /// the model has; layers it does not cover get nothing.
    ///
    /// C equivalent: `llama_set_adapter_cvec(ctx, data, len, n_embd, il_start, il_end)`.
    ///
    /// # Errors
    /// [`AdapterError::ControlVector`] when `data` is empty, not a whole number of
    /// rows, longer than the model's layers 1.., or the layer range is empty or outside
    /// `1..n_layer`; nothing changes then.
    pub fn set_control_vector(
        &mut self,
        data: &[f32],
        layers: RangeInclusive<u32>,
    ) -> Result<(), AdapterError> {
        let model = self.model();
        let (n_embd, n_layer) = (model.n_embd() as usize, model.n_layer());
        let err = |s: String| Err(AdapterError::ControlVector(s));
        if n_embd == 0 || data.is_empty() || !data.len().is_multiple_of(n_embd) {
            return err(format!(
                "{} floats are not a whole number of rows of n_embd {n_embd}",
                data.len()
            ));
        }
        let rows = data.len() / n_embd;
        if rows > n_layer.saturating_sub(1) as usize {
            return err(format!(
                "{rows} rows, the model has {} layers after layer 0",
                n_layer.saturating_sub(1)
            ));
        }
        let (start, end) = (*layers.start(), *layers.end());
        if start == 0 || start > end || end >= n_layer {
            return err(format!(
                "layers {start}..={end} are not a range within 1..={}",
                n_layer.saturating_sub(1)
            ));
        }
        // SAFETY: valid context; `data` holds `data.len()` floats, copied during the call;
        // n_embd matches the model, the layers are within it (both checked above).
        let ret = unsafe {
            sys::llama_set_adapter_cvec(
                self.as_ptr(),
                data.as_ptr(),
                data.len(),
                n_embd as i32,
                start as i32,
                end as i32,
            )
        };
        if ret != 0 {
            return err(crate::logging::take_last_error()
                .unwrap_or_else(|| format!("llama_set_adapter_cvec returned {ret}")));
        }
        Ok(())
    }

    /// Removes the control vector.
    ///
    /// C equivalent: `llama_set_adapter_cvec(ctx, NULL, 0, 0, -1, -1)`.
    pub fn clear_control_vector(&mut self) {
        // SAFETY: valid context; NULL data is the documented way to clear the vector.
        unsafe { sys::llama_set_adapter_cvec(self.as_ptr(), std::ptr::null(), 0, 0, -1, -1) };
    }
}
