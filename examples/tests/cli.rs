//! Every example program answers `--help` with exit 0 and a bad flag with exit 2, and
//! `minimal` (the one people copy) streams a chat reply from a real, synthetic model.

use std::process::Command;

use llama_cpp_moe::gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_examples::built_example;

/// The examples that parse through `llama_cpp_moe_examples::cli`: their errors are one
/// line, `NAME: message (see --help)`.
const ONE_LINE_ERRORS: [&str; 3] = ["simple_moe", "rpc_server", "gguf_synth"];

#[test]
fn help_exits_0_and_bad_flags_exit_2() {
    for name in ONE_LINE_ERRORS.into_iter().chain(["minimal"]) {
        let help = Command::new(built_example(name))
            .arg("--help")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&help.stdout);
        assert_eq!(help.status.code(), Some(0), "{name} --help: {help:?}");
        assert!(
            stdout.contains("Usage:"),
            "{name} --help printed {stdout:?}"
        );

        let bad = Command::new(built_example(name))
            .arg("--no-such-flag")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(
            bad.status.code(),
            Some(2),
            "{name} --no-such-flag: {stderr}"
        );
        assert!(stderr.contains("--no-such-flag"), "{name}: {stderr}");
        assert!(
            bad.stdout.is_empty(),
            "{name} wrote to stdout on a bad flag"
        );
        if ONE_LINE_ERRORS.contains(&name) {
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
        }
    }
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
