//! The two ggml RPC entry points we call, whether the RPC backend is linked in or, with
//! `dynamic-backends`, a module loaded at run time (then its functions are reached
//! through the backend registry, as llama.cpp's own tools do).

use std::ffi::c_char;

use llama_cpp_moe_sys as sys;

type AddServerFn = unsafe extern "C" fn(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
type StartServerFn = unsafe extern "C" fn(
    endpoint: *const c_char,
    cache_dir: *const c_char,
    n_threads: usize,
    n_devices: usize,
    devices: *mut sys::ggml_backend_dev_t,
);

#[cfg(not(feature = "dynamic-backends"))]
fn add_server_fn() -> Option<AddServerFn> {
    Some(sys::ggml_backend_rpc_add_server)
}

#[cfg(not(feature = "dynamic-backends"))]
fn start_server_fn() -> Option<StartServerFn> {
    Some(sys::ggml_backend_rpc_start_server)
}

/// Looks a function up in the loaded RPC backend module.
#[cfg(feature = "dynamic-backends")]
fn proc_address(name: &std::ffi::CStr) -> Option<*mut std::ffi::c_void> {
    // SAFETY: NUL-terminated name; the registry outlives the process.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return None;
    }
    // SAFETY: reg is a registered backend; name is NUL-terminated.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

#[cfg(feature = "dynamic-backends")]
fn add_server_fn() -> Option<AddServerFn> {
    let f = proc_address(c"ggml_backend_rpc_add_server")?;
    // SAFETY: the RPC module exports this name with exactly this signature (ggml-rpc.h).
    Some(unsafe { std::mem::transmute::<*mut std::ffi::c_void, AddServerFn>(f) })
}

#[cfg(feature = "dynamic-backends")]
fn start_server_fn() -> Option<StartServerFn> {
    let f = proc_address(c"ggml_backend_rpc_start_server")?;
    // SAFETY: the RPC module exports this name with exactly this signature (ggml-rpc.h).
    Some(unsafe { std::mem::transmute::<*mut std::ffi::c_void, StartServerFn>(f) })
}

/// `ggml_backend_rpc_add_server`; `None` when the RPC backend is not available.
///
/// # Safety
/// `endpoint` must be NUL-terminated, and a compatible server must accept connections
/// there: ggml aborts when it cannot connect.
pub(super) unsafe fn add_server(endpoint: *const c_char) -> Option<sys::ggml_backend_reg_t> {
    let f = add_server_fn()?;
    // SAFETY: forwarded to the caller.
    Some(unsafe { f(endpoint) })
}

/// `ggml_backend_rpc_start_server`; `None` when the RPC backend is not available.
///
/// # Safety
/// The strings must be NUL-terminated (`cache_dir` may be NULL) and `devices` must point
/// to `n_devices` registered devices; all must outlive the call.
pub(super) unsafe fn start_server(
    endpoint: *const c_char,
    cache_dir: *const c_char,
    n_threads: usize,
    n_devices: usize,
    devices: *mut sys::ggml_backend_dev_t,
) -> Option<()> {
    let f = start_server_fn()?;
    // SAFETY: forwarded to the caller.
    unsafe { f(endpoint, cache_dir, n_threads, n_devices, devices) };
    Some(())
}
