//! Decode speed of one synthetic MoE with Q8_0 experts against the same model with its
//! routed experts quantized to Q4_0 by `quantize` (attention and shared tensors stay
//! Q8_0), in one run: rounds alternate between the two models and the ratio is the
//! geometric mean of the per-round ratios.
//!
//! ```text
//! cargo run --release -p llama-cpp-moe-benches --example quant_mix -- [--preset small] [-n 64] [--rounds 3]
//! ```

use std::path::PathBuf;

use clap::Parser;
use llama_cpp_moe::context::ClearData;
use llama_cpp_moe::quantize::{quantize, Ftype, QuantizeParams};
use llama_cpp_moe::{
    AddSpecial, Backend, Context, ContextParams, GenerateParams, GgmlType, Model, ModelParams,
    ParseSpecial, SamplerBuilder,
};
use llama_cpp_moe_benches::{geomean, synthetic_model};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use llama_cpp_moe_gguf::GgufFile;

type BoxError = Box<dyn std::error::Error>;

/// Decode tok/s, Q8_0 experts vs Q4_0 experts (per-tensor override), CPU.
#[derive(Parser, Debug)]
#[command(name = "quant_mix")]
struct Args {
    /// Synthetic qwen3moe preset: tiny or small.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Tokens decoded per round.
    #[arg(short = 'n', long, default_value_t = 64)]
    tokens: usize,
    /// Rounds per model (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: i32,
}

fn main() -> Result<(), BoxError> {
    let a = Args::parse();
    llama_cpp_moe::logging::set_silent(true);
    let preset = match a.preset.as_str() {
        "tiny" => Preset::Tiny,
        "small" => Preset::Small,
        other => return Err(format!("unknown preset {other:?}").into()),
    };
    let backend = Backend::init();
    let q8 = synthetic_model(Arch::Qwen3Moe, preset)?;
    let mix = PathBuf::from(format!("{}.q4_0-exps.gguf", q8.display()));
    if !mix.is_file() {
        let params = QuantizeParams::new(Ftype::Q8_0)
            .with_allow_requantize(true)
            .with_tensor_type(r"ffn_(up|gate|down)_exps", GgmlType::Q4_0);
        quantize(&backend, &q8, &mix, &params)?;
    }
    let expert_bytes = |p: &PathBuf| -> Result<u64, BoxError> {
        Ok(GgufFile::open(p)?
            .tensors()
            .iter()
            .filter(|t| t.name.contains("_exps"))
            .filter_map(|t| t.ty.tensor_bytes(&t.shape))
            .sum())
    };
    println!(
        "expert bytes: Q8_0 {:.1} MiB, Q4_0 {:.1} MiB",
        expert_bytes(&q8)? as f64 / 1048576.0,
        expert_bytes(&mix)? as f64 / 1048576.0
    );

    let mp = ModelParams::default().with_n_gpu_layers(0);
    let models = [
        Model::load(&backend, &q8, &mp)?,
        Model::load(&backend, &mix, &mp)?,
    ];
    let cp = ContextParams::default()
        .with_n_ctx(512)
        .with_n_threads(a.threads)
        .with_n_threads_batch(a.threads);
    let mut ctxs = Vec::new();
    for m in &models {
        ctxs.push(Context::new(m, &cp)?);
    }
    let mut speeds = [Vec::new(), Vec::new()];
    for round in 0..=a.rounds {
        for (i, (m, ctx)) in models.iter().zip(ctxs.iter_mut()).enumerate() {
            ctx.clear_memory(ClearData::Keep)?;
            let vocab = m.vocab();
            let mut sampler = SamplerBuilder::new().greedy(&vocab)?;
            let prompt = vocab.tokenize(
                "The router picks the top experts",
                AddSpecial::Yes,
                ParseSpecial::No,
            )?;
            let out = ctx.complete(
                &mut sampler,
                &prompt,
                GenerateParams::default()
                    .with_max_tokens(a.tokens)
                    .with_stop_at_eog(false),
            )?;
            let tps = out.stats.decode_tokens_per_second().unwrap_or(0.0);
            if round > 0 {
                speeds[i].push(tps); // round 0 is warm-up
            }
        }
    }
    let ratios: Vec<f64> = speeds[1]
        .iter()
        .zip(&speeds[0])
        .map(|(b, a)| b / a)
        .collect();
    println!(
        "decode tok/s: Q8_0 experts {:.1}, Q4_0 experts {:.1}; ratio Q4_0/Q8_0 {:.3} (geomean of {} rounds, {} tokens, {} threads)",
        geomean(&speeds[0]).unwrap_or(f64::NAN),
        geomean(&speeds[1]).unwrap_or(f64::NAN),
        geomean(&ratios).unwrap_or(f64::NAN),
        a.rounds,
        a.tokens,
        a.threads
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "per-round ratios: {} (median {:.2})",
        fmt(&ratios),
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
