//! Conversion to `llama_model_params`: validation, then one owned array per pointer C
//! receives (tensor overrides, metadata overrides, devices, tensor split).

use std::ffi::{c_char, c_void};

use llama_cpp_moe_sys as sys;

use super::regex::check_regex;
use super::{max_devices, max_tensor_overrides, KvValue, LoadMode, ModelParams, ParamsError};
use super::{OverrideKind, OverrideTarget};
use crate::backend::{Backend, BufferType, Device, UnknownBufferType};

impl ModelParams {
    /// Builds the raw struct after validating everything. Pointers in it borrow from
    /// `self` (pattern strings) or from the returned value (arrays), hence the lifetime.
    pub(crate) fn to_raw(&self, backend: &Backend) -> Result<RawModelParams<'_>, ParamsError> {
        if let Some(e) = &self.invalid {
            return Err(e.clone());
        }
        self.check_limits()?;
        let overrides = self.override_array(backend)?;
        let kv = self.kv_override_array()?;
        let mut devices = self.device_array();
        let split = self.tensor_split_array();

        // SAFETY: returns a plain struct by value.
        let mut raw = unsafe { sys::llama_model_default_params() };
        raw.n_gpu_layers = self.n_gpu_layers;
        raw.split_mode = self.split_mode.raw();
        raw.main_gpu = self.main_gpu;
        // llama.cpp asserts (aborts) when no_alloc meets a memory-mapped load: a dry run
        // reads nothing, so it never maps.
        raw.load_mode = if self.no_alloc {
            LoadMode::Read.raw()
        } else {
            self.load_mode.raw()
        };
        raw.vocab_only = self.vocab_only;
        raw.check_tensors = self.check_tensors;
        raw.use_extra_bufts = self.use_extra_bufts;
        raw.no_host = self.no_host;
        raw.no_alloc = self.no_alloc;
        // The arrays' heap buffers do not move when RawModelParams moves. An empty list
        // is NULL, as llama.cpp's defaults are, rather than a lone terminator.
        raw.tensor_buft_overrides = non_empty(&overrides, self.tensor_overrides().count());
        raw.kv_overrides = non_empty(&kv, self.kv_overrides.len());
        raw.devices = if self.devices.is_empty() {
            std::ptr::null_mut()
        } else {
            devices.as_mut_ptr()
        };
        raw.tensor_split = non_empty(&split, self.tensor_split.len());
        Ok(RawModelParams {
            raw,
            _overrides: overrides,
            _kv: kv,
            _devices: devices,
            _split: split,
            _owner: std::marker::PhantomData,
        })
    }

    /// The lengths C cannot take: more overrides or devices than llama.cpp's fixed limits.
    fn check_limits(&self) -> Result<(), ParamsError> {
        let count = self.tensor_overrides().count();
        let max = max_tensor_overrides();
        if count > max {
            return Err(ParamsError::TooManyOverrides { count, max });
        }
        let max_dev = max_devices();
        for (what, count) in [
            ("devices", self.devices.len()),
            ("tensor_split", self.tensor_split.len()),
        ] {
            if count > max_dev {
                return Err(ParamsError::TooManyDevices {
                    what,
                    count,
                    max: max_dev,
                });
            }
        }
        Ok(())
    }

    /// `tensor_buft_overrides`: explicit patterns checked with the loader's regex engine,
    /// every target resolved to a buffer type, then the `{NULL, NULL}` terminator.
    fn override_array(
        &self,
        backend: &Backend,
    ) -> Result<Vec<sys::llama_model_tensor_buft_override>, ParamsError> {
        let mut overrides = Vec::with_capacity(self.tensor_overrides().count() + 1);
        for o in self.tensor_overrides() {
            if o.kind == OverrideKind::Explicit {
                check_regex(&o.pattern).map_err(|reason| ParamsError::InvalidPattern {
                    pattern: o.pattern().to_owned(),
                    reason,
                })?;
            }
            let buft = resolve_target(&o.target, backend).map_err(|source| {
                ParamsError::UnknownBufferType {
                    pattern: o.pattern().to_owned(),
                    source,
                }
            })?;
            overrides.push(sys::llama_model_tensor_buft_override {
                pattern: o.pattern.as_ptr(),
                buft: buft.as_ptr(),
            });
        }
        overrides.push(sys::llama_model_tensor_buft_override {
            pattern: std::ptr::null(),
            buft: std::ptr::null_mut(),
        });
        Ok(overrides)
    }

    /// `kv_overrides`: each value copied inline, then the empty-key terminator.
    fn kv_override_array(&self) -> Result<Vec<sys::llama_model_kv_override>, ParamsError> {
        let mut kv = Vec::with_capacity(self.kv_overrides.len() + 1);
        for (key, value) in &self.kv_overrides {
            kv.push(kv_override(key, value)?);
        }
        // SAFETY: an all-zero llama_model_kv_override (empty key) is the terminator.
        kv.push(unsafe { std::mem::zeroed::<sys::llama_model_kv_override>() });
        Ok(kv)
    }

    /// `devices`: the device list, NULL-terminated.
    fn device_array(&self) -> Vec<sys::ggml_backend_dev_t> {
        let mut devices: Vec<sys::ggml_backend_dev_t> =
            self.devices.iter().map(Device::as_ptr).collect();
        devices.push(std::ptr::null_mut());
        devices
    }

    /// `tensor_split`: llama.cpp reads exactly `llama_max_devices()` floats.
    fn tensor_split_array(&self) -> Vec<f32> {
        let mut split = self.tensor_split.clone();
        split.resize(max_devices(), 0.0);
        split
    }
}

/// A pointer to `array`, or NULL when the list it carries has no entry (`len == 0`).
fn non_empty<T>(array: &[T], len: usize) -> *const T {
    if len == 0 {
        std::ptr::null()
    } else {
        array.as_ptr()
    }
}

/// The buffer type an override sends its tensors to, looked up now (named buffer types
/// exist only once their device is registered, e.g. after `add_rpc_server`).
fn resolve_target(
    target: &OverrideTarget,
    backend: &Backend,
) -> Result<BufferType, UnknownBufferType> {
    Ok(match target {
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
    })
}
pub(crate) fn kv_override(
    key: &str,
    value: &KvValue,
) -> Result<sys::llama_model_kv_override, ParamsError> {
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
    pub(super) fn read_overrides(&self) -> Vec<(String, sys::ggml_backend_buffer_type_t)> {
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
