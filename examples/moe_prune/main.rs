//! `moe_prune`: a smaller GGUF that keeps, in every MoE layer, the experts a routing
//! profile ranks highest.
//!
//! ```text
//! # profile your workload (add runs to the same file), then prune
//! cargo run --release --example simple_moe -- -m model.gguf -p "..." --moe-stats profile.json
//! cargo run --release --example moe_prune -- -m model.gguf -o pruned.gguf \
//!     --profile profile.json --keep-fraction 0.75
//! ```
//! Experts no token of the profile selected can be removed without changing what the
//! model generates on that workload wherever llama.cpp renormalises the gate weights
//! over the chosen experts (qwen3moe, mixtral, gpt-oss); removing selected experts
//! costs quality that only an evaluation on your model can tell.
//!
//! `--budget-mib M` keeps the most experts per layer whose file fits in M MiB (the
//! size is computed to the byte before anything is written).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use llama_cpp_moe::routing::RoutingStats;
use llama_cpp_moe::ErrorChain;
use llama_cpp_moe_examples::prune::{top_experts, Criterion};
use llama_cpp_moe_gguf::prune::{plan_prune, prune_experts};
use llama_cpp_moe_gguf::GgufFile;

/// Write a GGUF keeping the experts a routing profile ranks highest in every MoE layer.
#[derive(Parser, Debug)]
#[command(name = "moe_prune")]
#[command(group(ArgGroup::new("amount").required(true).args(["keep_experts", "keep_fraction", "budget_mib"])))]
struct Args {
    /// Input model.
    #[arg(short = 'm', long = "model", value_name = "IN.gguf")]
    model: PathBuf,
    /// Output model.
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    output: PathBuf,
    /// Routing profile of the model (`simple_moe --moe-stats FILE`).
    #[arg(long, value_name = "PROFILE.json")]
    profile: PathBuf,
    /// Experts to keep in every MoE layer.
    #[arg(long, value_name = "N")]
    keep_experts: Option<u64>,
    /// Share of the experts to keep in every MoE layer (rounded up), in (0, 1].
    #[arg(long, value_name = "F", value_parser = parse_fraction)]
    keep_fraction: Option<f64>,
    /// Keep the most experts per layer whose output file fits in this many MiB.
    #[arg(long, value_name = "M")]
    budget_mib: Option<f64>,
    /// What ranks the experts.
    #[arg(long, value_enum, default_value = "frequency")]
    criterion: Criterion,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(format!("{f} is not in (0, 1]"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("moe_prune: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The most experts per layer whose pruned file is at most `mib` MiB.
fn fit_budget(model: &GgufFile, mib: f64) -> Result<u64, String> {
    let budget = (mib * 1024.0 * 1024.0).floor() as u64;
    let used = model.expert_used_count().unwrap_or(1).max(1);
    let expert_count = model.expert_count().unwrap_or(0);
    let size = |n| -> Result<u64, String> {
        plan_prune(model, n)
            .map(|r| r.file_bytes_after)
            .map_err(|e| ErrorChain(&e).to_string())
    };
    // The size grows with the count: search down from all experts.
    for n in (used..=expert_count).rev() {
        if size(n)? <= budget {
            return Ok(n);
        }
    }
    Err(format!(
        "{mib} MiB is too small: keeping {used} experts per layer (expert_used_count) takes \
         {} bytes",
        size(used)?
    ))
}

fn run(a: &Args) -> Result<(), String> {
    let model = GgufFile::open(&a.model).map_err(|e| ErrorChain(&e).to_string())?;
    let profile = RoutingStats::load(&a.profile).map_err(|e| ErrorChain(&e).to_string())?;
    let expert_count = model
        .expert_count()
        .ok_or_else(|| format!("{}: not a MoE model", a.model.display()))?;
    let keep = match (a.keep_experts, a.keep_fraction, a.budget_mib) {
        (Some(n), _, _) => n,
        (None, Some(f), _) => (f * expert_count as f64).ceil() as u64,
        (None, None, Some(mib)) => fit_budget(&model, mib)?,
        (None, None, None) => unreachable!("clap requires one of the three"),
    };
    let chosen = top_experts(&model, &profile, keep, a.criterion)
        .map_err(|e| format!("{}: {e}", a.profile.display()))?;
    let report =
        prune_experts(&model, &chosen, &a.output).map_err(|e| ErrorChain(&e).to_string())?;

    println!(
        "kept {keep} of {expert_count} experts per MoE layer (by {:?}, profile of {} tokens)",
        a.criterion,
        profile.tokens()
    );
    for (layer, experts) in &chosen {
        let stats = profile.layer(*layer);
        let selections: u64 = stats.map_or(0, |l| l.counts.iter().sum());
        let kept_selections: u64 =
            stats.map_or(0, |l| experts.iter().map(|&x| l.counts[x as usize]).sum());
        println!(
            "layer {layer:3}: kept {experts:?} ({kept_selections} of {selections} selections)"
        );
    }
    println!(
        "{:<14} {:>14} {:>14}",
        "tensor kind", "bytes before", "bytes after"
    );
    for (kind, before) in &report.bytes_before {
        let after = report.bytes_after.get(kind).copied().unwrap_or(0);
        println!("{:<14} {before:>14} {after:>14}", format!("{kind:?}"));
    }
    println!(
        "{:<14} {:>14} {:>14}",
        "file", report.file_bytes_before, report.file_bytes_after
    );
    println!("wrote {}", a.output.display());
    Ok(())
}
