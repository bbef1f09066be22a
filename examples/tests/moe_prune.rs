//! `moe_prune`: profile a prompt set with `simple_moe --moe-stats`, prune the experts it
//! never selected, and the pruned model generates exactly the same tokens.
//!
//! Exact where llama.cpp's gating gives the chosen experts the same weights whatever the
//! other experts' logits (`build_moe_ffn` in src/llama-graph.cpp): qwen3moe, Mixtral
//! (llama) and phimoe take a softmax over all experts, then the top k, then renormalise
//! over them (`norm_w` is true in src/models/qwen3moe.cpp, llama.cpp and phi3.cpp), so
//! each weight is exp(l_i) / Σ_topk exp(l_j); gpt-oss takes a softmax over the top-k
//! logits only (SOFTMAX_WEIGHT in src/models/openai-moe.cpp). Top-k over a superset of
//! the chosen experts picks the same experts in all of them. Not exact: deepseek
//! (src/models/deepseek.cpp: softmax over all experts, `norm_w` false), whose weights
//! lose the pruned experts' share of the denominator (its logits move; its greedy
//! tokens happen to stay the same on the synthetic model, so only the logits tell).

use std::path::{Path, PathBuf};
use std::process::Command;

use llama_cpp_moe::routing::RoutingStats;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams, Pos, SeqId};
use llama_cpp_moe_examples::built_example;
use llama_cpp_moe_examples::prune::{top_experts, Criterion};
use llama_cpp_moe_gguf::prune::{moe_layers, plan_prune, prune_experts, KeepList};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgufFile, TensorKind};
use serde_json::Value;

const PROMPTS: [&str; 2] = ["The quick brown fox", "Hello"];

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-prune-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8 greedy tokens after `prompt` (with `--moe-stats profile` when given).
fn greedy(model: &Path, prompt: &str, profile: Option<&Path>) -> Vec<u64> {
    let mut cmd = Command::new(built_example("simple_moe"));
    cmd.arg("-m")
        .arg(model)
        .args(["-p", prompt, "-n", "8", "-t", "2", "-c", "256", "--json"]);
    if let Some(p) = profile {
        cmd.arg("--moe-stats").arg(p);
    }
    let out = cmd.output().expect("run simple_moe");
    assert!(
        out.status.success(),
        "simple_moe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

fn moe_prune(args: &[&str]) -> std::process::Output {
    Command::new(built_example("moe_prune"))
        .args(args)
        .output()
        .expect("run moe_prune")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn bytes_of(file: &GgufFile, kind: TensorKind) -> u64 {
    file.tensors_of(kind).map(|t| t.n_bytes).sum()
}

/// Profiles PROMPTS on `model`, prunes with `moe_prune --keep-experts N` where N is the
/// most experts any layer selected, regenerates: the same tokens. Returns the profile
/// and the pruned file.
fn profile_prune_regenerate(d: &Path, model: &Path) -> (RoutingStats, PathBuf) {
    let name = model.display().to_string();
    let profile = d.join("profile.json");
    let before: Vec<Vec<u64>> = PROMPTS
        .iter()
        .map(|p| greedy(model, p, Some(&profile)))
        .collect();
    let stats = RoutingStats::load(&profile).unwrap();
    assert_eq!(stats.prompts, PROMPTS.len() as u64);
    let src = GgufFile::open(model).unwrap();
    let e = src.expert_count().unwrap();
    let keep = stats
        .layers
        .iter()
        .map(|l| l.counts.iter().filter(|&&c| c > 0).count() as u64)
        .max()
        .unwrap();
    assert!(
        keep < e,
        "{name}: the prompts selected every expert of a layer"
    );

    let pruned = d.join("pruned.gguf");
    let out = moe_prune(&[
        "-m",
        s(model),
        "-o",
        s(&pruned),
        "--profile",
        s(&profile),
        "--keep-experts",
        &keep.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "moe_prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stats.layers[0].layer;
    assert!(
        stdout.contains(&format!("layer {first:3}: kept [")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("kept {keep} of {e} experts")),
        "{stdout}"
    );

    let dst = GgufFile::open(&pruned).unwrap();
    assert_eq!(dst.expert_count(), Some(keep));
    // Every selected expert survived.
    for l in &stats.layers {
        let selected = l.counts.iter().filter(|&&c| c > 0).count() as u64;
        assert!(selected <= keep, "layer {}", l.layer);
    }
    // Bytes: exactly the pruned experts' share of the expert tensors and the router
    // goes; nothing else changes.
    for kind in TensorKind::ALL {
        let (b, a) = (bytes_of(&src, kind), bytes_of(&dst, kind));
        match kind {
            TensorKind::RoutedExpert | TensorKind::Router => {
                assert_eq!(a, b / e * keep, "{kind:?}")
            }
            _ => assert_eq!(a, b, "{kind:?}"),
        }
    }

    let after: Vec<Vec<u64>> = PROMPTS.iter().map(|p| greedy(&pruned, p, None)).collect();
    assert_eq!(
        after, before,
        "pruning never-selected experts changed the tokens"
    );
    (stats, pruned)
}

/// qwen3moe, and Mixtral (llama) and phimoe, which gate the same way (`norm_w` true in
/// src/models/llama.cpp and src/models/phi3.cpp, whose graph phimoe uses).
#[test]
fn pruning_never_selected_experts_of_renormalising_archs_keeps_the_tokens() {
    for arch in [Arch::Qwen3Moe, Arch::Mixtral, Arch::PhiMoe] {
        let d = dir(arch.cli_name());
        let model = d.join("model.gguf");
        // 128 experts, 2 per token: two short prompts and 8 tokens each cannot select
        // them all (pigeonhole), so something is pruned in every layer.
        let mut h = Hparams::preset(arch, Preset::Tiny);
        h.n_expert = 128;
        SynthSpec::new(arch, Preset::Tiny)
            .hparams(h)
            .seed(11)
            .write(&model)
            .unwrap();
        let (stats, _) = profile_prune_regenerate(&d, &model);
        assert_eq!(stats.layers.len(), 2, "{arch:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn pruning_to_the_fixed_experts_of_gpt_oss_keeps_the_tokens_and_pruning_one_more_does_not() {
    let d = dir("gpt-oss");
    let model = d.join("gpt-oss.gguf");
    SynthSpec::new(Arch::GptOss, Preset::Tiny)
        .fixed_routing(&[3, 1])
        .seed(12)
        .write(&model)
        .unwrap();
    let (stats, pruned) = profile_prune_regenerate(&d, &model);
    for l in &stats.layers {
        assert_eq!(l.counts[0], 0);
        assert_eq!(l.counts[2], 0);
    }
    let kept = GgufFile::open(&pruned).unwrap();
    assert_eq!(kept.expert_count(), Some(2));

    // The control: dropping selected expert 3 changes the generation, so the
    // comparison above can fail.
    let src = GgufFile::open(&model).unwrap();
    let keep: KeepList = moe_layers(&src)
        .into_iter()
        .map(|l| (l, vec![0, 1]))
        .collect();
    let wrong = d.join("wrong.gguf");
    prune_experts(&src, &keep, &wrong).unwrap();
    let before = greedy(&model, PROMPTS[0], None);
    assert_ne!(greedy(&wrong, PROMPTS[0], None), before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_profile_of_another_model_is_refused() {
    let d = dir("mismatch");
    let gpt = d.join("gpt-oss.gguf");
    SynthSpec::new(Arch::GptOss, Preset::Tiny)
        .seed(1)
        .write(&gpt)
        .unwrap();
    let profile = d.join("gpt-oss.json");
    greedy(&gpt, "Hello", Some(&profile));
    let qwen = d.join("qwen.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(1)
        .write(&qwen)
        .unwrap();
    let out_path = d.join("out.gguf");
    let out = moe_prune(&[
        "-m",
        s(&qwen),
        "-o",
        s(&out_path),
        "--profile",
        s(&profile),
        "--keep-fraction",
        "0.5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another model: arch is gpt-oss in the profile and qwen3moe"),
        "{stderr}"
    );
    assert!(!out_path.exists());
    // Too few experts for expert_used_count: refused, nothing written.
    let out = moe_prune(&[
        "-m",
        s(&gpt),
        "-o",
        s(&out_path),
        "--profile",
        s(&profile),
        "--keep-experts",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expert_used_count"), "{stderr}");
    assert!(!out_path.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_byte_budget_keeps_the_most_experts_that_fit_to_the_byte() {
    let d = dir("budget");
    let model = d.join("gpt-oss.gguf");
    SynthSpec::new(Arch::GptOss, Preset::Tiny)
        .fixed_routing(&[2, 0])
        .seed(5)
        .write(&model)
        .unwrap();
    let profile = d.join("profile.json");
    greedy(&model, "Hello", Some(&profile));
    let src = GgufFile::open(&model).unwrap();
    let size = |n| plan_prune(&src, n).unwrap().file_bytes_after;
    let mib = |bytes: u64| format!("{}", bytes as f64 / 1_048_576.0);
    let out_path = d.join("out.gguf");
    let run = |budget: u64| {
        let _ = std::fs::remove_file(&out_path);
        moe_prune(&[
            "-m",
            s(&model),
            "-o",
            s(&out_path),
            "--profile",
            s(&profile),
            "--budget-mib",
            &mib(budget),
        ])
    };
    for (budget, kept) in [(size(3), 3), (size(3) - 1, 2), (size(4), 4)] {
        let out = run(budget);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dst = GgufFile::open(&out_path).unwrap();
        assert_eq!(dst.expert_count(), Some(kept), "budget {budget}");
        assert_eq!(dst.file_size(), size(kept), "budget {budget}");
        assert!(dst.file_size() <= budget);
        // The two fixed experts (router biases 10 and 9) are the ones kept first.
        if kept == 2 {
            let bias = dst.tensor("blk.0.ffn_gate_inp.bias").unwrap();
            let data = std::fs::read(&out_path).unwrap();
            let at = bias.offset as usize;
            let values: Vec<f32> = data[at..at + 8]
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(values, vec![9.0, 10.0]);
        }
    }
    let out = run(size(2) - 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is too small"), "{stderr}");
    assert!(!out_path.exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// The last prompt token's logits.
fn last_logits(path: &Path, prompt: &str) -> Vec<f32> {
    let model = Model::load(
        &Backend::init(),
        path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .unwrap();
    let tokens = model
        .vocab()
        .tokenize(prompt, AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    let mut ctx = Context::new(
        &model,
        &ContextParams::default().with_n_ctx(256).with_n_threads(1),
    )
    .unwrap();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    ctx.logits(tokens.len() - 1).unwrap().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Where the gate weights are a softmax over all experts without renormalisation
/// (deepseek: `norm_w` false in src/models/deepseek.cpp), pruning never-selected
/// experts shrinks the softmax's denominator and so raises every kept weight: the
/// logits move, unlike qwen3moe's (renormalised, unchanged but for rounding).
#[test]
fn pruning_never_selected_experts_moves_deepseek_logits_but_not_qwen3moe_logits() {
    let mut moved = Vec::new();
    for arch in [Arch::Qwen3Moe, Arch::DeepSeek] {
        let d = dir(&format!("logits-{}", arch.cli_name()));
        let model = d.join("model.gguf");
        let mut h = Hparams::preset(arch, Preset::Tiny);
        h.n_expert = 128;
        SynthSpec::new(arch, Preset::Tiny)
            .hparams(h)
            .seed(21)
            .write(&model)
            .unwrap();
        let profile = d.join("profile.json");
        greedy(&model, PROMPTS[0], Some(&profile));
        let stats = RoutingStats::load(&profile).unwrap();
        let src = GgufFile::open(&model).unwrap();
        let keep = stats
            .layers
            .iter()
            .map(|l| l.counts.iter().filter(|&&c| c > 0).count() as u64)
            .max()
            .unwrap();
        let chosen = top_experts(&src, &stats, keep, Criterion::Frequency).unwrap();
        let pruned = d.join("pruned.gguf");
        prune_experts(&src, &chosen, &pruned).unwrap();
        let diff = max_abs_diff(
            &last_logits(&model, PROMPTS[0]),
            &last_logits(&pruned, PROMPTS[0]),
        );
        moved.push(diff);
        let _ = std::fs::remove_dir_all(&d);
    }
    // Same machine, same kernels: qwen3moe's logits came out bit-identical here; allow
    // rounding in the renormalisation. deepseek's moved by 0.15.
    assert!(moved[0] <= 1e-4, "qwen3moe logits moved by {}", moved[0]);
    assert!(
        moved[1] > 1e-2,
        "deepseek logits moved by only {}",
        moved[1]
    );
}
