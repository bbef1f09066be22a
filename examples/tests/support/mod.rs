//! Helpers shared by the example tests that read `simple_moe --json`.

use std::path::Path;
use std::process::Command;

use llama_cpp_moe_examples::built_example;
use serde_json::Value;

/// Runs the built `simple_moe` on `model` (8 greedy tokens after a fixed prompt, context
/// `n_ctx`, 2 threads, `--json`) with `extra` arguments; its JSON report. Panics with
/// the stderr when it fails and with the stdout when that is not one JSON object.
pub fn simple_moe_json(model: &Path, n_ctx: u32, extra: &[&str]) -> Value {
    let out = Command::new(built_example("simple_moe"))
        .arg("-m")
        .arg(model)
        .args(["-p", "The quick brown fox", "-n", "8", "-t", "2", "--json"])
        .args(["-c", &n_ctx.to_string()])
        .args(extra)
        .output()
        .expect("run simple_moe");
    assert!(
        out.status.success(),
        "simple_moe {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "simple_moe --json printed something else than one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
