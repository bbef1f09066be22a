//! Every synthetic architecture loads in real llama.cpp and decodes with finite logits.

mod gguf_support;

use gguf_support::{load_and_decode, TempPath};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::GgmlType;

fn check(arch: Arch, ty: Option<GgmlType>) {
    let mut spec = SynthSpec::new(arch, Preset::Tiny).seed(1);
    if let Some(ty) = ty {
        spec = spec.weight_type(ty);
    }
    let label = format!(
        "{}-{}",
        arch.cli_name(),
        ty.map_or("default".into(), |t| t.name().to_owned())
    );
    let path = TempPath::new(&format!("load-{label}.gguf"));
    let report = spec.write(&path.0).expect("write");
    assert!(
        report.bytes <= 8 << 20,
        "{label}: tiny must stay under 8 MiB, got {}",
        report.bytes
    );
    let out = load_and_decode(&path.0, "Hello, mixture of experts! 1234");
    assert_eq!(out.n_vocab as u32, spec.hparams_ref().n_vocab, "{label}");
    assert!(out.n_prompt > 3, "{label}");
    assert!(
        out.logits.iter().all(|l| l.is_finite()),
        "{label}: non-finite logits"
    );
    let spread = out.logits.iter().cloned().fold(f32::MIN, f32::max)
        - out.logits.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "{label}: logits are constant ({spread})");
}

#[test]
fn qwen3moe_tiny_decodes() {
    check(Arch::Qwen3Moe, None);
    check(Arch::Qwen3Moe, Some(GgmlType::F16));
}

#[test]
fn llama_dense_tiny_decodes() {
    check(Arch::Llama, None);
    check(Arch::Llama, Some(GgmlType::F16));
}

#[test]
fn gpt_oss_tiny_decodes() {
    check(Arch::GptOss, None);
    check(Arch::GptOss, Some(GgmlType::Q8_0));
}

#[test]
fn phimoe_tiny_decodes() {
    check(Arch::PhiMoe, None);
}

#[test]
fn deepseek_tiny_decodes() {
    check(Arch::DeepSeek, None);
}

#[test]
fn mixtral_tiny_decodes() {
    check(Arch::Mixtral, None);
    check(Arch::Mixtral, Some(GgmlType::Q4_0));
}

/// A multi-GB `full` file also loads and decodes (mmap keeps memory low). Too big for CI:
/// generate one with `gguf_synth --preset full`, then run
/// `GGUF_FULL_MODEL=path cargo test --release --test gguf_load -- --ignored`.
#[test]
#[ignore = "needs a full-size synthetic model at $GGUF_FULL_MODEL"]
fn full_size_model_from_env_decodes() {
    let path =
        std::env::var_os("GGUF_FULL_MODEL").expect("set GGUF_FULL_MODEL to a full-preset file");
    let out = load_and_decode(std::path::Path::new(&path), "Hello, mixture of experts!");
    assert!(
        out.logits.iter().all(|l| l.is_finite()),
        "non-finite logits"
    );
}
