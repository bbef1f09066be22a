//! `simple_moe`: run a (MoE) GGUF model with llama.cpp's flags, and show where its
//! tensors went and what that cost.
//!
//! ```text
//! cargo run --release --example simple_moe -- --help
//! cargo run --release --example simple_moe                       # synthetic qwen3moe:small
//! cargo run --release --example simple_moe -- -m model.gguf -ngl all --n-cpu-moe 20
//! ```
//! Without `-m` it generates a synthetic MoE model once into a cache directory (printed),
//! so it works offline on a fresh machine. Such a model's text is gibberish; its
//! placement and speed are real.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use llama_cpp_moe::{
    AddSpecial, Backend, Context, GenerateParams, GenerationStats, Model, ParseSpecial, Sampler,
    SamplerBuilder,
};
use llama_cpp_moe_examples::cli;
use llama_cpp_moe_examples::model_setup::{
    backend_with_rpc_servers, load, model_file, ms, new_context, print_devices, Loaded,
    PlacementReport,
};
use llama_cpp_moe_examples::simple_moe_args::{Args, GenerationArgs};
use serde_json::json;

fn main() -> ExitCode {
    let args = Args::from_env();
    cli::init_logging(args.output.verbose);
    if !args.output.verbose {
        llama_cpp_moe::log::set_silent(true);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("simple_moe: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The steps, in order: devices, model file, load, generate, report.
fn run(a: &Args) -> Result<(), String> {
    let backend = backend_with_rpc_servers(&a.placement)?;
    if a.placement.list_devices {
        print_devices(&backend);
        return Ok(());
    }
    let interactive = std::io::stderr().is_terminal() && !a.output.json;
    let file = model_file(&a.model, interactive)?;
    let loaded = load(&a.placement, &backend, file, interactive)?;
    let mut ctx = new_context(&a.generation.context, &a.placement, 1, &loaded.model)?;
    let generated = generate(a, &loaded, &mut ctx)?;
    let report = Report::collect(a, &backend, &loaded, &ctx, generated)?;
    if a.output.json {
        report.print_json();
    } else {
        report.print_text();
    }
    Ok(())
}

fn sampler<'m>(g: &GenerationArgs, model: &'m Model) -> Result<Sampler<'m>, String> {
    let vocab = model.vocab();
    if g.temp <= 0.0 {
        return SamplerBuilder::new()
            .greedy(&vocab)
            .map_err(|e| format!("sampler: {e}"));
    }
    let mut b = SamplerBuilder::new();
    if let Some(k) = g.top_k {
        b = b.with_top_k(k);
    }
    if let Some(p) = g.top_p {
        b = b.with_top_p(p, 1);
    }
    if let Some(p) = g.min_p {
        b = b.with_min_p(p, 1);
    }
    b.with_temp(g.temp)
        .dist(&vocab, g.seed)
        .map_err(|e| format!("sampler: {e}"))
}

/// What the generation produced.
struct Generated {
    text: String,
    tokens: Vec<i32>,
    stats: GenerationStats,
}

/// Generates after the prompt, streaming the text to stdout unless `--no-stream` or
/// `--json`.
fn generate<'m>(a: &Args, loaded: &'m Loaded, ctx: &mut Context<'m>) -> Result<Generated, String> {
    let mut sampler = sampler(&a.generation, &loaded.model)?;
    let prompt = loaded
        .model
        .vocab()
        .tokenize(&a.generation.prompt, AddSpecial::Yes, ParseSpecial::Yes)
        .map_err(|e| format!("tokenizing the prompt: {e}"))?;
    if loaded.file.synthetic && !a.output.json {
        eprintln!(
            "note: synthetic model with random weights: the text below is gibberish; \
             the placement and the speed are real"
        );
    }
    let stream = !a.output.no_stream && !a.output.json;
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut generation = ctx.generate(
        &mut sampler,
        &prompt,
        GenerateParams::default().with_max_tokens(a.generation.n_predict as usize),
    );
    for item in &mut generation {
        let item = item.map_err(|e| format!("generation: {e}"))?;
        if stream {
            let _ = stdout.write_all(item.text.as_bytes());
            let _ = stdout.flush();
        }
        text.push_str(&item.text);
        tokens.push(item.token.0);
    }
    // Bytes of a character the generation cut in half.
    let tail = generation.flush();
    text.push_str(&tail);
    let stats = generation.stats().clone();
    if stream {
        let _ = writeln!(stdout, "{tail}");
    } else if !a.output.json {
        let _ = writeln!(stdout, "{text}");
    }
    Ok(Generated {
        text,
        tokens,
        stats,
    })
}

/// Everything the run reports, collected once so that text and JSON output agree.
struct Report<'a> {
    loaded: &'a Loaded,
    generated: Generated,
    placement: PlacementReport,
}

impl<'a> Report<'a> {
    fn collect(
        a: &Args,
        backend: &Backend,
        loaded: &'a Loaded,
        ctx: &Context<'_>,
        generated: Generated,
    ) -> Result<Report<'a>, String> {
        Ok(Report {
            loaded,
            generated,
            placement: PlacementReport::collect(&a.placement, backend, loaded, ctx)?,
        })
    }

    fn print_json(&self) {
        let (loaded, g, model) = (self.loaded, &self.generated, &self.loaded.model);
        let experts = self.placement.placement.experts_on_host();
        let overrides = self.placement.overrides_json();
        let out = json!({
            "model": {
                "path": loaded.file.path.display().to_string(),
                "synthetic": loaded.file.synthetic,
                "arch": model.arch(),
                "description": model.description(),
                "n_layer": model.n_layer(),
                "n_expert": model.n_expert(),
                "n_expert_used": model.n_expert_used(),
                "n_params": model.n_params(),
                "size_bytes": model.size(),
            },
            "offload": {
                "n_gpu_layers": loaded.params.n_gpu_layers(),
                "cpu_moe_layers": self.placement.cpu_moe_layers,
                "overrides": overrides,
            },
            "placement": self.placement.breakdown.iter().map(|r| json!({
                "buft": r.buffer_type_name(),
                "is_host": r.is_host,
                "model_bytes": r.model_bytes,
                "context_bytes": r.context_bytes,
                "compute_bytes": r.compute_bytes,
            })).collect::<Vec<_>>(),
            "tensors_by_buft": self.placement.placement.totals().iter().map(|(buft, t)| json!({
                "buft": buft, "tensors": t.count, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "experts_on_host": {"tensors": experts.count, "bytes": experts.bytes},
            "device_bytes_saved": self.placement.device_bytes_saved,
            "timing": {
                "load_ms": ms(loaded.load_time),
                "ttft_ms": g.stats.ttft.map(ms),
                "prompt_tokens": g.stats.prompt_tokens,
                "prompt_tps": g.stats.prefill_tokens_per_second(),
                "gen_tokens": g.stats.generated_tokens,
                "gen_tps": g.stats.decode_tokens_per_second(),
            },
            "text": g.text,
            "tokens": g.tokens,
        });
        println!("{out}");
    }

    fn print_text(&self) {
        let g = &self.generated;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1} {unit}"));
        eprintln!();
        self.placement.print_model(self.loaded);
        eprintln!("TTFT       {}", opt(g.stats.ttft.map(ms), "ms"));
        eprintln!(
            "prefill    {} tokens, {}",
            g.stats.prompt_tokens,
            opt(g.stats.prefill_tokens_per_second(), "tok/s")
        );
        eprintln!(
            "decode     {} tokens, {}",
            g.stats.generated_tokens,
            opt(g.stats.decode_tokens_per_second(), "tok/s")
        );
        eprintln!();
        self.placement.print_placement();
    }
}
