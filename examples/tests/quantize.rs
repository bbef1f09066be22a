//! The `quantize` example: llama-quantize's flags on a synthetic MoE, and its errors.

use std::process::Command;

use llama_cpp_moe_cli::testing::{assert_cli_conventions, built_example};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufFile};

#[test]
fn tensor_type_flag_gives_the_experts_their_own_type() {
    let exe = built_example("quantize");
    assert_cli_conventions(&exe, false);
    let dir = std::env::temp_dir().join(format!("quantize-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("qwen3moe-f16.gguf");
    let output = dir.join("qwen3moe-mix.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .weight_type(GgmlType::F16)
        .write(&input)
        .unwrap();
    let out = Command::new(&exe)
        .args([
            "--tensor-type",
            "ffn_.*_exps=q4_0",
            "--output-tensor-type",
            "f16",
        ])
        .arg(&input)
        .arg(&output)
        .args(["Q8_0", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("q4_0"),
        "{out:?}"
    );
    let file = GgufFile::open(&output).unwrap();
    for t in file.tensors() {
        if t.name.contains("_exps") {
            assert_eq!(t.ty, GgmlType::Q4_0, "{}", t.name);
        } else if t.name.contains("attn_q.weight") {
            assert_eq!(t.ty, GgmlType::Q8_0, "{}", t.name);
        }
    }
    assert_eq!(file.tensor("output.weight").unwrap().ty, GgmlType::F16);

    // A type ggml cannot quantize into: one-line typed error, exit 1, no abort.
    let out = Command::new(&exe)
        .args(["--tensor-type", "attn=q8_1"])
        .arg(&input)
        .arg(dir.join("bad.gguf"))
        .arg("Q8_0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("quantize: error: "), "{stderr}");
    assert!(stderr.contains("q8_1"), "{stderr}");

    // A missing input.
    let out = Command::new(&exe)
        .arg(dir.join("missing.gguf"))
        .arg(dir.join("o.gguf"))
        .arg("Q4_0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
}
