//! Greedy generation gives identical tokens whatever the placement options.
//!
//! Every offload builder (layers on accelerators, expert tensors kept in host memory,
//! explicit overrides) must leave the arithmetic alone. On a machine without an
//! accelerator this checks the CPU paths (mapped vs. copied vs. repacked buffers); the
//! RPC proof in `examples/tests/rpc_proof.rs` repeats it across a real second device.

mod ctx_support;

use ctx_support::{greedy_tokens_with, write_tiny};
use llama_cpp_moe::ModelParams;
use llama_cpp_moe_gguf::synth::Arch;

fn variants() -> Vec<(&'static str, ModelParams)> {
    vec![
        ("default", ModelParams::default()),
        (
            "no layers offloaded",
            ModelParams::default().with_n_gpu_layers(0),
        ),
        (
            "all layers offloaded",
            ModelParams::default().with_n_gpu_layers(-1),
        ),
        (
            "one layer offloaded",
            ModelParams::default().with_n_gpu_layers(1),
        ),
        (
            "--cpu-moe",
            ModelParams::default()
                .with_all_gpu_layers()
                .with_cpu_moe_all(),
        ),
        (
            "--n-cpu-moe 1",
            ModelParams::default().with_all_gpu_layers().with_cpu_moe(1),
        ),
        (
            "--cpu-moe-layers last",
            ModelParams::default()
                .with_all_gpu_layers()
                .with_cpu_moe_layers([1]),
        ),
        (
            "--n-cpu-ffn 1",
            ModelParams::default().with_all_gpu_layers().with_cpu_ffn(1),
        ),
        (
            "-ot exps=CPU",
            ModelParams::default()
                .with_all_gpu_layers()
                .with_tensor_override("exps", "CPU"),
        ),
    ]
}

fn parity(arch: Arch) {
    let path = write_tiny(arch);
    let mut runs = variants()
        .into_iter()
        .map(|(name, params)| (name, greedy_tokens_with(&path, &params, 8)));
    let (base_name, base) = runs.next().unwrap();
    assert_eq!(base.len(), 8);
    for (name, tokens) in runs {
        assert_eq!(tokens, base, "{name} vs {base_name}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn moe_greedy_tokens_do_not_depend_on_placement() {
    parity(Arch::Qwen3Moe);
}

#[test]
fn dense_greedy_tokens_do_not_depend_on_placement() {
    parity(Arch::Llama);
}

#[test]
fn every_moe_arch_greedy_tokens_do_not_depend_on_placement() {
    for arch in [Arch::GptOss, Arch::PhiMoe, Arch::DeepSeek, Arch::Mixtral] {
        parity(arch);
    }
}
