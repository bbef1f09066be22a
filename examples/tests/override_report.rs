//! `simple_moe` reports what each `-ot` pattern matched: a warning for a pattern that
//! matched nothing, and every pattern's tensors and bytes in `--json`.

use std::process::Command;

use llama_cpp_moe_examples::built_example;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::GgufFile;

#[test]
fn simple_moe_reports_each_override_and_warns_about_a_typo() {
    let dir = std::env::temp_dir().join(format!("override-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("qwen3moe-tiny.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(1)
        .write(&model)
        .unwrap();
    let out = Command::new(built_example("simple_moe"))
        .arg("-m")
        .arg(&model)
        .args(["-n", "2", "--json"])
        .args([
            "-ot",
            r"blk\.1\.ffn_upp_exps=CPU",
            "-ot",
            r"blk\.1\.ffn_up_exps=CPU",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simple_moe failed: {stderr}");
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("matched no tensor"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("ffn_upp_exps"), "{stderr}");
    assert!(warnings[0].contains("blk.1.ffn_up_exps.weight"), "{stderr}");

    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let overrides = json["offload"]["overrides"].as_array().unwrap();
    assert_eq!(overrides.len(), 2, "{overrides:?}");
    assert_eq!(overrides[0]["tensors"], 0);
    assert_eq!(overrides[0]["bytes"], 0);
    let up = GgufFile::open(&model)
        .unwrap()
        .tensor("blk.1.ffn_up_exps.weight")
        .unwrap()
        .n_bytes;
    assert_eq!(overrides[1]["tensors"], 1);
    assert_eq!(overrides[1]["bytes"], up);
    assert_eq!(overrides[1]["explicit"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
