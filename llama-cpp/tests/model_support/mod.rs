//! Shared by the `model_*` and `moe_*` tests: synthetic models generated once per test
//! process into a temp dir, and a loopback RPC server that acts as a real second device.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_moe::rpc::RpcServerConfig;
use llama_cpp_moe::Backend;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};

/// The per-process temp dir, removed by nobody: tests of one run share it and the
/// files are a few MiB; the name carries the pid so runs never collide.
pub fn temp_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("llama-cpp-moe-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    })
    .clone()
}

/// Backend with llama.cpp's chatter kept out of the test output (errors are still
/// captured for typed errors). Set `MODEL_TEST_LOG=1` to see it through a logger.
pub fn backend() -> Backend {
    if std::env::var_os("MODEL_TEST_LOG").is_none() {
        llama_cpp_moe::logging::set_silent(true);
    }
    Backend::init()
}

/// The tiny synthetic model of `arch`, written once per process.
pub fn model(arch: Arch) -> PathBuf {
    static PATHS: OnceLock<Mutex<HashMap<Arch, PathBuf>>> = OnceLock::new();
    let mut paths = PATHS.get_or_init(Default::default).lock().unwrap();
    paths
        .entry(arch)
        .or_insert_with(|| {
            let path = temp_dir().join(format!("{}-tiny.gguf", arch.cli_name()));
            SynthSpec::new(arch, Preset::Tiny)
                .seed(7)
                .write(&path)
                .expect("synthetic model");
            path
        })
        .clone()
}

/// The small model of `arch` (more layers than tiny, so plans move whole layers and
/// split one), written once per process.
pub fn small_model(arch: Arch) -> PathBuf {
    static PATHS: OnceLock<Mutex<HashMap<Arch, PathBuf>>> = OnceLock::new();
    let mut paths = PATHS.get_or_init(Default::default).lock().unwrap();
    paths
        .entry(arch)
        .or_insert_with(|| {
            let path = temp_dir().join(format!("{}-small.gguf", arch.cli_name()));
            SynthSpec::new(arch, Preset::Small)
                .seed(7)
                .write(&path)
                .expect("synthetic model");
            path
        })
        .clone()
}

/// The hyper-parameters the factory used for `arch`'s tiny model.
pub fn spec(arch: Arch) -> SynthSpec {
    SynthSpec::new(arch, Preset::Tiny).seed(7)
}

/// Starts our RPC server ([`RpcServerConfig`]) on a free loopback port, backed by the
/// CPU device, in a background thread, once per process, and registers it with
/// [`Backend::add_rpc_server`]. Returns the endpoint.
pub fn rpc_endpoint(backend: &Backend) -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            let (endpoint, devices) = start_rpc_server(backend);
            assert_eq!(devices.len(), 1);
            endpoint
        })
        .clone()
}

/// The RPC devices of [`rpc_endpoint`]'s server and of a second one, each started and
/// registered once per process, in that order.
pub fn two_rpc_devices(backend: &Backend) -> [llama_cpp_moe::Device; 2] {
    static SECOND: OnceLock<String> = OnceLock::new();
    let first = rpc_endpoint(backend);
    let second = SECOND.get_or_init(|| start_rpc_server(backend).0).clone();
    // Adding a registered server again returns its device and registers nothing.
    [first, second].map(|endpoint| backend.add_rpc_server(&endpoint).expect("registered")[0])
}

/// Starts one more of our RPC servers on a free loopback port (serving the CPU device,
/// in a background thread that ends with the test process) and registers it with
/// `backend`: its endpoint and the devices it added.
pub fn start_rpc_server(backend: &Backend) -> (String, Vec<llama_cpp_moe::Device>) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let config = RpcServerConfig::new("127.0.0.1", port)
        .threads(1)
        .device("CPU");
    let server_backend = backend.clone();
    std::thread::spawn(move || config.serve(&server_backend));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&endpoint).is_err() {
        assert!(Instant::now() < deadline, "RPC server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let devices = backend.add_rpc_server(&endpoint).expect("add RPC server");
    (endpoint, devices)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Records this crate's own warnings (target `llama_cpp_moe`).
struct Recorder(Mutex<Vec<String>>);

impl log::Log for Recorder {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target() == "llama_cpp_moe"
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) && r.level() == log::Level::Warn {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder(Mutex::new(Vec::new()));

/// Runs `f` and returns what it returned and the warnings it logged. Calls run one at a
/// time, so the shared recorder sees only the running call's records.
pub fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    static INSTALL: OnceLock<()> = OnceLock::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    INSTALL.get_or_init(|| {
        log::set_logger(&RECORDER).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    RECORDER.0.lock().unwrap().clear();
    let out = f();
    (out, std::mem::take(&mut *RECORDER.0.lock().unwrap()))
}
