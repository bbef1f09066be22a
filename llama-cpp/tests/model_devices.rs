//! The device list and RPC servers as real devices.

mod model_support;

use std::net::TcpListener;

use llama_cpp_moe::rpc::RpcError;
use llama_cpp_moe::DeviceType;
use model_support::{backend, rpc_endpoint};

#[test]
fn the_cpu_device_is_listed_with_its_memory() {
    let backend = backend();
    let devices = backend.devices();
    let cpu = devices
        .iter()
        .find(|d| d.device_type() == DeviceType::Cpu)
        .expect("a CPU device");
    assert_eq!(Ok(*cpu), backend.cpu_device());
    assert_eq!(cpu.name(), "CPU");
    assert!(!cpu.description().is_empty());
    let (free, total) = cpu.memory();
    assert!(total > 0 && free <= total);
    assert_eq!(cpu.buffer_type().unwrap().name(), "CPU");
    assert!(backend.buffer_types().iter().any(|b| b.name() == "CPU"));
}

#[test]
fn the_registries_name_each_compiled_backend_with_its_device_count() {
    let backend = backend();
    let registries = backend.registries();
    let cpu: Vec<_> = registries.iter().filter(|r| r.name == "CPU").collect();
    assert_eq!(cpu.len(), 1, "one CPU registry in {registries:?}");
    assert_eq!(cpu[0].device_count, 1);
    assert!(registries.iter().all(|r| !r.name.is_empty()));
    #[cfg(feature = "rpc")]
    assert!(
        registries.iter().any(|r| r.name == "RPC"),
        "the rpc feature registers ggml's RPC backend: {registries:?}"
    );
}

#[cfg(feature = "rpc")]
#[test]
fn an_rpc_server_becomes_a_gpu_device_once() {
    let backend = backend();
    let endpoint = rpc_endpoint(&backend);
    let rpc: Vec<_> = backend
        .devices()
        .into_iter()
        .filter(|d| d.description() == endpoint)
        .collect();
    assert_eq!(rpc.len(), 1);
    assert_eq!(rpc[0].device_type(), DeviceType::Gpu);
    let buft = rpc[0].buffer_type().unwrap();
    assert_eq!(buft.name(), format!("{}[{endpoint}]", rpc[0].name()));
    assert_eq!(backend.buffer_type_by_name(&buft.name()).unwrap(), buft);
    // Adding it again returns the same device and registers nothing new.
    let n = backend.devices().len();
    let again = backend.add_rpc_server(&endpoint).unwrap();
    assert_eq!(again, rpc);
    assert_eq!(backend.devices().len(), n);
}

#[cfg(feature = "rpc")]
#[test]
fn unreachable_or_malformed_rpc_endpoints_are_typed_errors() {
    let backend = backend();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // listener dropped: nothing accepts there now
    let err = backend
        .add_rpc_server(&format!("127.0.0.1:{closed}"))
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err}");
    for bad in ["127.0.0.1", "host:port", ":1", "127.0.0.1:99999"] {
        let err = backend.add_rpc_server(bad).unwrap_err();
        assert!(matches!(err, RpcError::BadEndpoint(_)), "{bad}: {err}");
    }
}

/// `Model::devices` is llama.cpp's own list for the load: the params' devices, and
/// none at all with split mode none and a negative main GPU.
#[cfg(feature = "rpc")]
#[test]
fn a_model_lists_the_devices_llama_cpp_loaded_it_onto() {
    use llama_cpp_moe::model::SplitMode;
    use llama_cpp_moe::{Model, ModelParams};
    use llama_cpp_moe_gguf::synth::Arch;

    let backend = backend();
    let endpoint = rpc_endpoint(&backend);
    let rpc = backend.add_rpc_server(&endpoint).unwrap()[0];
    let path = model_support::model(Arch::Qwen3Moe);
    let on_rpc = ModelParams::default()
        .with_all_gpu_layers()
        .with_devices([rpc]);
    let model = Model::load(&backend, &path, &on_rpc).unwrap();
    assert_eq!(model.devices(), [rpc]);
    let cpu_only = on_rpc.with_split_mode(SplitMode::None).with_main_gpu(-1);
    let model = Model::load(&backend, &path, &cpu_only).unwrap();
    assert_eq!(model.devices(), []);
}
