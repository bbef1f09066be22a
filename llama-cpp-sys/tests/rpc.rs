//! A real second device: ggml's RPC server on loopback, registered as a remote device.
// With dynamic backends RPC is a runtime module, reached through the registry instead.
#![cfg(all(feature = "rpc", not(feature = "dynamic-backends")))]

use std::ffi::CString;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use llama_cpp_moe_sys as sys;

#[test]
fn loopback_rpc_server_adds_a_gpu_device() {
    // SAFETY: no preconditions.
    unsafe { sys::llama_backend_init() };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");

    // SAFETY: plain queries after backend init.
    let before = unsafe { sys::ggml_backend_dev_count() };
    // SAFETY: the CPU device always exists.
    let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    assert!(!cpu.is_null());
    let server_endpoint = CString::new(endpoint.clone()).unwrap();
    // The server blocks forever; it dies with the test process.
    let cpu_addr = cpu as usize;
    std::thread::spawn(move || {
        let mut devices = [cpu_addr as sys::ggml_backend_dev_t];
        // SAFETY: the endpoint string and the device array outlive the call (moved here).
        unsafe {
            sys::ggml_backend_rpc_start_server(
                server_endpoint.as_ptr(),
                std::ptr::null(),
                1,
                1,
                devices.as_mut_ptr(),
            )
        };
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&endpoint).is_err() {
        assert!(
            Instant::now() < deadline,
            "RPC server did not listen on {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let c_endpoint = CString::new(endpoint.clone()).unwrap();
    // SAFETY: the endpoint is NUL-terminated; the server is listening.
    let reg = unsafe { sys::ggml_backend_rpc_add_server(c_endpoint.as_ptr()) };
    assert!(
        !reg.is_null(),
        "ggml_backend_rpc_add_server({endpoint}) failed"
    );
    // add_server only describes the remote devices; registering makes them visible.
    // SAFETY: reg is a valid registry that was not registered before.
    unsafe { sys::ggml_backend_register(reg) };
    // SAFETY: plain queries.
    let after = unsafe { sys::ggml_backend_dev_count() };
    assert_eq!(after, before + 1, "one remote device expected");
    // SAFETY: index < count.
    let dev = unsafe { sys::ggml_backend_dev_get(after - 1) };
    // SAFETY: dev is a registered device.
    let dev_type = unsafe { sys::ggml_backend_dev_type(dev) };
    assert_eq!(dev_type, sys::GGML_BACKEND_DEVICE_TYPE_GPU);
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: out-pointers are valid.
    unsafe { sys::ggml_backend_dev_memory(dev, &mut free, &mut total) };
    assert!(total > 0, "remote device reports its memory");
}
