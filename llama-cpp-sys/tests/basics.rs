//! The sys crate against the real llama.cpp it built: no model needed.

use std::ffi::{CStr, CString};
use std::mem::{align_of, size_of};
use std::sync::Once;

use llama_cpp_moe_sys as sys;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: llama_backend_init has no preconditions and Once runs it a single time.
        unsafe { sys::llama_backend_init() };
        // With runtime-loaded backends even the CPU backend is a module to load first.
        #[cfg(feature = "dynamic-backends")]
        // SAFETY: no preconditions; searches GGML_BACKEND_DIR baked in by the build.
        unsafe {
            sys::ggml_backend_load_all()
        };
    });
}

#[test]
fn system_info_names_the_cpu_backend() {
    init();
    // SAFETY: returns a static NUL-terminated string owned by llama.cpp.
    let info = unsafe { CStr::from_ptr(sys::llama_print_system_info()) };
    let info = info.to_str().expect("system info is ASCII");
    assert!(info.contains("CPU"), "unexpected system info: {info}");
}

#[test]
fn at_least_one_device_is_registered() {
    init();
    // SAFETY: plain query after backend init.
    let n = unsafe { sys::ggml_backend_dev_count() };
    assert!(n >= 1, "no ggml device registered");
    // SAFETY: index < count; the name is a static string owned by the registry.
    let name = unsafe { CStr::from_ptr(sys::ggml_backend_dev_name(sys::ggml_backend_dev_get(0))) };
    assert!(!name.to_bytes().is_empty());
}

#[test]
fn tensor_override_array_is_bounded_and_two_pointers_wide() {
    // SAFETY: pure function.
    let max = unsafe { sys::llama_max_tensor_buft_overrides() };
    assert!(max > 0, "llama_max_tensor_buft_overrides() = {max}");
    assert_eq!(
        size_of::<sys::llama_model_tensor_buft_override>(),
        2 * size_of::<*const u8>()
    );
    assert_eq!(
        align_of::<sys::llama_model_tensor_buft_override>(),
        align_of::<*const u8>()
    );
}

#[test]
fn default_model_params_are_sane() {
    // SAFETY: returns a plain struct by value.
    let p = unsafe { sys::llama_model_default_params() };
    assert!(p.tensor_buft_overrides.is_null());
    assert!(p.devices.is_null());
    assert!(p.kv_overrides.is_null());
    assert!(p.progress_callback.is_none());
    assert!(!p.vocab_only);
    assert!(!p.no_alloc);
    assert_eq!(p.split_mode, sys::LLAMA_SPLIT_MODE_LAYER);
    assert!(
        p.n_gpu_layers != 0,
        "default offloads nothing: {}",
        p.n_gpu_layers
    );
}

fn regex_check(pattern: &str) -> Result<(), String> {
    let pattern = CString::new(pattern).unwrap();
    let mut err = [0 as std::ffi::c_char; 256];
    // SAFETY: pattern is NUL-terminated; err is writable for its full length.
    let ok =
        unsafe { sys::llama_moe_regex_is_valid(pattern.as_ptr(), err.as_mut_ptr(), err.len()) };
    if ok == 1 {
        Ok(())
    } else {
        // SAFETY: the shim always NUL-terminates err within its length.
        Err(unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }
}

#[test]
fn regex_shim_accepts_the_expert_pattern_and_rejects_garbage_without_aborting() {
    regex_check(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps").expect("the llama.cpp expert regex");
    regex_check(r"blk\.12\.ffn_(up|down|gate|gate_up)_(ch|)exps").expect("per-layer regex");
    let err = regex_check("((").expect_err("'((' must be rejected");
    assert!(!err.is_empty(), "rejection carries std::regex's message");
    regex_check("[z-a]").expect_err("reversed range is invalid");
}

#[test]
fn regex_shim_matches_like_the_loader() {
    let search = |p: &str, name: &str| {
        let (p, name) = (CString::new(p).unwrap(), CString::new(name).unwrap());
        // SAFETY: both strings are NUL-terminated.
        unsafe { sys::llama_moe_regex_search(p.as_ptr(), name.as_ptr()) }
    };
    let experts = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps";
    assert_eq!(search(experts, "blk.3.ffn_gate_up_exps.weight"), 1);
    assert_eq!(search(experts, "blk.3.ffn_down_chexps.weight"), 1);
    assert_eq!(search(experts, "blk.3.ffn_up_shexp.weight"), 0);
    assert_eq!(search(experts, "blk.3.ffn_up.weight"), 0);
    assert_eq!(search("((", "x"), -1);
}

#[test]
fn version_names_llama_and_ggml() {
    assert!(sys::LLAMA_CPP_VERSION.starts_with("llama "));
    assert!(sys::LLAMA_CPP_VERSION.contains("ggml "));
}

#[test]
fn model_device_shim_answers_null_for_no_model() {
    // SAFETY: the shim checks for NULL before touching the model.
    unsafe {
        assert_eq!(sys::llama_moe_model_n_devices(std::ptr::null()), 0);
        assert!(sys::llama_moe_model_device(std::ptr::null(), 0).is_null());
    }
}
