//! Proof on a real second device: the `rpc_server` example serves this machine's CPU over
//! ggml RPC on loopback, and `simple_moe --json` loads a synthetic qwen3moe onto it with
//! `-ngl all`. Expert offload must move exactly the routed expert bytes off that device,
//! keep the generated tokens identical, and spare the server process that memory.
//!
//! Both binaries are the examples `cargo test` builds next to this test.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use llama_cpp_moe_examples::{built_example, RpcServerProcess};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};
use llama_cpp_moe_gguf::GgufFile;
use serde_json::Value;
use support::simple_moe_json;

/// (VmRSS, VmHWM) of the server process in bytes.
fn server_memory(server: &RpcServerProcess) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id()))
        .expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A qwen3moe small enough for debug builds, with experts large enough (~27 MB) that
/// the server's memory shows them clearly above allocator noise.
fn model() -> PathBuf {
    let path = std::env::temp_dir().join(format!("rpc-proof-qwen3moe-{}.gguf", std::process::id()));
    let mut hp = Hparams::preset(Arch::Qwen3Moe, Preset::Tiny);
    hp.n_layer = 4;
    hp.n_embd = 256;
    hp.n_expert = 16;
    hp.n_expert_used = 2;
    hp.n_ff_exp = 512;
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .hparams(hp)
        .random_blocks(true)
        .seed(7)
        .write(&path)
        .expect("write the synthetic model");
    path
}

fn simple_moe(model: &Path, extra: &[&str]) -> Value {
    simple_moe_json(model, 256, extra)
}

fn rpc_model_bytes(run: &Value) -> u64 {
    run["placement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["buft"].as_str().unwrap().starts_with("RPC"))
        .map(|r| r["model_bytes"].as_u64().unwrap())
        .sum()
}

fn tokens(run: &Value) -> Vec<i64> {
    run["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

fn assert_within(actual: u64, expected: u64, what: &str) {
    let diff = actual.abs_diff(expected) as f64;
    assert!(
        diff <= 0.02 * expected as f64,
        "{what}: {actual} bytes, expected {expected} within 2%"
    );
}

struct Run {
    json: Value,
    rss_growth: u64,
}

/// One simple_moe run against a fresh server, so its memory growth is this run's alone.
fn on_fresh_server(model: &Path, extra: &[&str]) -> Run {
    let server = RpcServerProcess::start();
    let (rss_before, _) = server_memory(&server);
    let mut args = vec!["--rpc", server.endpoint.as_str(), "-ngl", "all"];
    args.extend_from_slice(extra);
    let json = simple_moe(model, &args);
    let (_, peak) = server_memory(&server);
    Run {
        json,
        rss_growth: peak.saturating_sub(rss_before),
    }
}

#[test]
fn expert_offload_moves_exactly_the_expert_bytes_off_the_rpc_device() {
    let model = model();
    let gguf = GgufFile::open(&model).unwrap();
    let layer_expert_bytes = |layers: &[u32]| -> u64 {
        gguf.expert_tensors()
            .filter(|t| t.layer().is_some_and(|l| layers.contains(&l)))
            .map(|t| t.n_bytes)
            .sum()
    };
    let all_expert_bytes = layer_expert_bytes(&[0, 1, 2, 3]);
    assert!(
        all_expert_bytes > 20 << 20,
        "experts: {all_expert_bytes} bytes"
    );

    // 1. No offload: the RPC device holds every layer's weights, experts included.
    let none = on_fresh_server(&model, &[]);
    let base = rpc_model_bytes(&none.json);
    assert!(base >= all_expert_bytes, "RPC holds {base} bytes");
    assert_eq!(none.json["experts_on_host"]["tensors"], 0);
    assert_eq!(none.json["model"]["n_layer"], 4);
    assert_eq!(none.json["model"]["n_expert"], 16);

    // 2. --cpu-moe: the RPC bytes drop by all routed expert bytes.
    let all = on_fresh_server(&model, &["--cpu-moe"]);
    assert_within(
        base - rpc_model_bytes(&all.json),
        all_expert_bytes,
        "--cpu-moe drop",
    );
    assert_eq!(
        all.json["experts_on_host"]["bytes"].as_u64().unwrap(),
        all_expert_bytes
    );
    assert_eq!(
        all.json["offload"]["cpu_moe_layers"],
        serde_json::json!([0, 1, 2, 3])
    );
    assert_eq!(
        all.json["device_bytes_saved"].as_u64().unwrap(),
        all_expert_bytes
    );

    // 3. --n-cpu-moe 2 (the first two layers) and --cpu-moe-layers 2-3 (the last two).
    let first = simple_moe_on(&model, &["--n-cpu-moe", "2"]);
    assert_within(
        base - rpc_model_bytes(&first),
        layer_expert_bytes(&[0, 1]),
        "--n-cpu-moe 2 drop",
    );
    assert_eq!(
        first["offload"]["cpu_moe_layers"],
        serde_json::json!([0, 1])
    );
    let last = simple_moe_on(&model, &["--cpu-moe-layers", "2-3"]);
    assert_within(
        base - rpc_model_bytes(&last),
        layer_expert_bytes(&[2, 3]),
        "--cpu-moe-layers 2-3 drop",
    );
    assert_eq!(last["offload"]["cpu_moe_layers"], serde_json::json!([2, 3]));

    // 4. Same greedy tokens everywhere, pure CPU included: the RPC server runs the same
    //    CPU kernels, so placement must not change the arithmetic.
    let cpu = simple_moe(&model, &[]);
    let expected = tokens(&cpu);
    assert_eq!(expected.len(), 8);
    for (name, run) in [
        ("no offload", &none.json),
        ("--cpu-moe", &all.json),
        ("--n-cpu-moe 2", &first),
        ("--cpu-moe-layers 2-3", &last),
    ] {
        assert_eq!(tokens(run), expected, "{name} vs pure CPU");
    }

    // 5. The server process is spared the expert memory: its growth with --cpu-moe is
    //    smaller by at least 90% of the expert bytes.
    let spared = none.rss_growth.saturating_sub(all.rss_growth);
    eprintln!(
        "server RSS growth: {} bytes without offload, {} with --cpu-moe; experts {all_expert_bytes}",
        none.rss_growth, all.rss_growth
    );
    assert!(
        spared as f64 >= 0.9 * all_expert_bytes as f64,
        "server RSS growth {} without vs {} with --cpu-moe: spared {spared}, experts {all_expert_bytes}",
        none.rss_growth,
        all.rss_growth
    );
    let _ = std::fs::remove_file(&model);
}

/// A run whose server memory is not measured (a fresh server all the same).
fn simple_moe_on(model: &Path, extra: &[&str]) -> Value {
    on_fresh_server(model, extra).json
}

#[test]
fn bad_arguments_end_with_one_line_and_a_nonzero_exit() {
    let missing = std::env::temp_dir().join("rpc-proof-no-such-model.gguf");
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["-m".into(), missing.display().to_string()],
        vec![
            "--synthetic".into(),
            "qwen3moe:tiny".into(),
            "-ot".into(),
            "exps=NoSuchBuffer".into(),
        ],
        vec![
            "--synthetic".into(),
            "qwen3moe:tiny".into(),
            "-ot".into(),
            "((=CPU".into(),
        ],
        vec![
            "--synthetic".into(),
            "qwen3moe:tiny".into(),
            "--rpc".into(),
            closed_port,
        ],
        vec!["--synthetic".into(), "nosucharch:tiny".into()],
        vec!["-n".into(), "many".into()],
    ];
    let cache = std::env::temp_dir().join(format!("rpc-proof-cache-{}", std::process::id()));
    for args in cases {
        let out = Command::new(built_example("simple_moe"))
            .args(&args)
            .env("LLAMA_CPP_MOE_CACHE", &cache)
            .output()
            .expect("run simple_moe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            out.status.code().is_some(),
            "{args:?} died by a signal: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("simple_moe:"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    let _ = std::fs::remove_dir_all(&cache);
}
