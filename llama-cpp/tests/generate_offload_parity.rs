//! Greedy generation gives identical tokens whatever the placement options.
//!
//! The harness takes `ModelParams`, so every offload builder (layers on accelerators,
//! expert tensors kept in host memory, ...) joins the list below as it lands.

mod ctx_support;

use ctx_support::{greedy_tokens_with, write_tiny};
use llama_cpp_moe::gguf::synth::Arch;
use llama_cpp_moe::ModelParams;

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
