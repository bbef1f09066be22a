//! The benchmark programs answer `--help` with exit 0 and a bad flag with one line and
//! exit 2, like the examples (they share the `llama-cpp-moe-cli` crate).

use std::process::Command;

use llama_cpp_moe_cli::testing::{assert_cli_conventions, built_example};

#[test]
fn help_exits_0_and_bad_flags_exit_2() {
    for name in ["bench_moe", "decode_bound"] {
        assert_cli_conventions(&built_example(name), true);
    }
    // A small plain-clap program: clap's own (several-line) errors.
    assert_cli_conventions(&built_example("quant_mix"), false);
}

#[test]
fn bench_moe_checks_what_clap_cannot() {
    let out = Command::new(built_example("bench_moe"))
        .args(["-n", "1", "--no-native"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--n-predict at least 2"), "{stderr}");
}
