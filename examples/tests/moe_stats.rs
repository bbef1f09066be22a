//! `simple_moe --moe-stats FILE`: a routing profile written after generation, added to
//! on the next run of the same model, and refused for another model.

mod support;

use std::process::Command;

use llama_cpp_moe::routing::RoutingStats;
use llama_cpp_moe_examples::built_example;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use support::simple_moe_json;

#[test]
fn moe_stats_writes_a_profile_and_adds_the_next_run_to_it() {
    let dir = std::env::temp_dir().join(format!("simple-moe-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("qwen3moe-tiny.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(2)
        .write(&model)
        .unwrap();
    let profile = dir.join("profile.json");
    let flag = ["--moe-stats", profile.to_str().unwrap()];

    // stdout stays one JSON object (the helper checks) with the flag.
    simple_moe_json(&model, 256, &flag);
    let first = RoutingStats::load(&profile).expect("profile written");
    assert_eq!(first.prompts, 1);
    assert_eq!(first.model.arch, "qwen3moe");
    assert_eq!(first.model.file_name.as_deref(), Some("qwen3moe-tiny.gguf"));
    assert_eq!(first.layers.len(), 2);
    assert!(first.tokens() >= 8, "{}", first.tokens());
    for l in &first.layers {
        assert_eq!(
            l.counts.iter().sum::<u64>(),
            l.tokens * 2,
            "layer {}",
            l.layer
        );
    }

    // The same greedy run again: exactly twice the counts.
    simple_moe_json(&model, 256, &flag);
    let both = RoutingStats::load(&profile).expect("profile");
    assert_eq!(both.prompts, 2);
    for (a, b) in first.layers.iter().zip(&both.layers) {
        let doubled: Vec<u64> = a.counts.iter().map(|c| 2 * c).collect();
        assert_eq!(b.counts, doubled, "layer {}", a.layer);
    }

    // The text summary, on stdout without --json.
    let out = Command::new(built_example("simple_moe"))
        .arg("-m")
        .arg(&model)
        .args(["-p", "Hello", "-n", "2", "-t", "2", "-c", "256"])
        .args(flag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("routing of qwen3moe"), "{stdout}");
    assert!(stdout.contains("layer   1:"), "{stdout}");

    // Another model's run is refused and leaves the profile alone.
    let other = dir.join("mixtral-tiny.gguf");
    SynthSpec::new(Arch::Mixtral, Preset::Tiny)
        .seed(2)
        .write(&other)
        .unwrap();
    let before = std::fs::read(&profile).unwrap();
    let out = Command::new(built_example("simple_moe"))
        .arg("-m")
        .arg(&other)
        .args(["-p", "Hello", "-n", "2", "-t", "2", "-c", "256"])
        .args(flag)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("different models"), "{stderr}");
    assert_eq!(std::fs::read(&profile).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
