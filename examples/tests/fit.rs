//! `simple_moe --fit` end to end against a real second device (the `rpc_server` example
//! on loopback): with `--fit-budget` the plan keeps the RPC device within the budget,
//! measured bytes equal the plan's prediction, and the tokens equal a CPU-only run;
//! `--plan --json` prints one plan object without loading; `-fitt` plans against the
//! device's reported free memory.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llama_cpp_moe_examples::{built_example, RpcServerProcess};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use serde_json::Value;
use support::simple_moe_json;

fn model(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("fit-{name}-{}.gguf", std::process::id()));
    SynthSpec::new(Arch::Qwen3Moe, Preset::Small)
        .seed(7)
        .write(&path)
        .expect("write the synthetic model");
    path
}

fn simple_moe(model: &Path, extra: &[&str]) -> Value {
    simple_moe_json(model, 512, extra)
}

#[test]
fn fit_with_a_budget_on_an_rpc_device() {
    let model = model("budget");
    let server = RpcServerProcess::start();
    let rpc = ["--rpc", server.endpoint.as_str(), "-ngl", "all"];

    // The plan alone: one object, no generation, nothing loaded.
    let mut args = rpc.to_vec();
    args.extend(["--plan", "--fit-budget", "100"]);
    let plan = simple_moe(&model, &args);
    assert!(plan.get("tokens").is_none(), "--plan must not generate");
    let device = &plan["devices"][0];
    let unplanned = device["unplanned_bytes"].as_u64().unwrap();
    assert!(unplanned > 100 << 20, "the model fits anyway: {unplanned}");
    assert!(device["predicted"]["total_bytes"].as_u64().unwrap() <= 100 << 20);
    assert!(plan["dry_runs"].as_u64().unwrap() >= 2);
    assert!(!plan["expert_layers_on_host"].as_array().unwrap().is_empty());

    // Load with it.
    let mut args = rpc.to_vec();
    args.extend(["--fit", "--fit-budget", "100"]);
    let fitted = simple_moe(&model, &args);
    let measured = &fitted["plan"]["measured"][0];
    let (predicted, real) = (
        measured["predicted_bytes"].as_u64().unwrap(),
        measured["measured_bytes"].as_u64().unwrap(),
    );
    assert!(real <= 100 << 20, "RPC holds {real} bytes");
    assert!(
        real.abs_diff(predicted) as f64 <= 0.01 * predicted as f64,
        "measured {real} vs predicted {predicted}"
    );
    let cpu = simple_moe(&model, &["-ngl", "0"]);
    assert_eq!(fitted["tokens"], cpu["tokens"]);

    // -fitt: a margin below the free memory the device reports (the host's, for an RPC
    // server serving the CPU), which this small model fits without moving anything.
    let mut args = rpc.to_vec();
    args.extend(["--plan", "-fitt", "64"]);
    let roomy = simple_moe(&model, &args);
    assert_eq!(roomy["moved"]["tensors"], 0, "{roomy}");
    let _ = std::fs::remove_file(&model);
}

#[test]
fn fit_without_a_device_is_a_clear_error() {
    let model = model("no-device");
    let out = Command::new(built_example("simple_moe"))
        .arg("-m")
        .arg(&model)
        .args(["--plan", "--fit-budget", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no device to plan for"), "{err}");
    let _ = std::fs::remove_file(&model);
}
