//! The benchmark programs answer `--help` with exit 0 and a bad flag with one line and
//! exit 2, like the examples (they share `llama_cpp_moe_examples::cli`).

use std::process::Command;

use llama_cpp_moe_examples::built_example;

#[test]
fn help_exits_0_and_bad_flags_exit_2() {
    for name in ["bench_moe", "decode_bound"] {
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
        assert_eq!(bad.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
        assert!(
            bad.stdout.is_empty(),
            "{name} wrote to stdout on a bad flag"
        );
    }
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
