//! Every example program answers `--help` with exit 0 and a bad flag with exit 2, and
//! `minimal` (the one people copy) streams a chat reply from a real, synthetic model.

use std::process::Command;

use llama_cpp_moe_cli::testing::{assert_cli_conventions, built_example};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};

#[test]
fn help_exits_0_and_bad_flags_exit_2() {
    for name in ["simple_moe", "rpc_server", "gguf_synth", "quality"] {
        assert_cli_conventions(&built_example(name), true);
    }
    // What people copy uses plain clap: its errors are clap's own, several lines.
    assert_cli_conventions(&built_example("minimal"), false);
    assert_cli_conventions(&built_example("moe_prune"), false);
}

#[test]
fn simple_moe_help_lists_the_llama_cpp_spellings() {
    let help = Command::new(built_example("simple_moe"))
        .arg("-h")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for spelling in [
        "-ngl = --n-gpu-layers",
        "-ot = --override-tensor",
        "-ub = --ubatch-size",
    ] {
        assert!(stdout.contains(spelling), "no {spelling:?} in {stdout}");
    }
}

#[test]
fn minimal_streams_a_chat_reply_from_a_synthetic_model() {
    let dir = std::env::temp_dir().join(format!("minimal-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("qwen3moe-tiny.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(1)
        .write(&model)
        .unwrap();

    let out = Command::new(built_example("minimal"))
        .arg(&model)
        .args(["Hello there", "--n-cpu-moe", "2", "-n", "12"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "minimal failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Random weights make gibberish, but twelve sampled tokens are text.
    assert!(
        stdout.trim_end_matches('\n').chars().count() >= 1,
        "{stdout:?}"
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
