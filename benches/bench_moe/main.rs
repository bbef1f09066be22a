//! Throughput harness: the same greedy loop through our safe API and through a native C
//! program linked to the same llama.cpp libraries, run interleaved, with Rust/native
//! ratios for prefill and decode.
//!
//! ```text
//! cargo run --release --example bench_moe -- [--quick] [--json] [--model F] [options]
//! ```
//!
//! Per placement (none, `--cpu-moe`, `--n-cpu-moe K`, `--cpu-moe-layers LIST`) and prompt
//! size, one native child process loads the model and waits; then each round runs the
//! native loop (the child, signalled over its stdin), the Rust loop without streaming and
//! the Rust loop with streaming, one after the other, never two at once. The first
//! `--warmup` rounds are dropped. Model loading and context creation are outside every
//! interval.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use llama_cpp_moe::{
    Backend, Context, ContextParams, GenerateParams, GenerationStats, Model, ModelParams,
    SamplerBuilder, Token,
};
use llama_cpp_moe_benches::{
    geomean, prompt_with_tokens, synthetic_model, Summary, NATIVE_EXE, PROMPTS,
};
use llama_cpp_moe_cli::{self as cli, GpuLayers, LayerList, Spellings};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error>;

#[derive(Debug, Clone, PartialEq)]
enum Placement {
    Default,
    CpuMoeAll,
    NCpuMoe(u32),
    /// `--cpu-moe-layers LIST`.
    Layers(LayerList),
}

impl Placement {
    fn label(&self) -> String {
        match self {
            Placement::Default => "none".into(),
            Placement::CpuMoeAll => "--cpu-moe".into(),
            Placement::NCpuMoe(k) => format!("--n-cpu-moe {k}"),
            Placement::Layers(list) => format!("--cpu-moe-layers {}", list.spec),
        }
    }

    fn apply(&self, params: ModelParams) -> ModelParams {
        match self {
            Placement::Default => params,
            Placement::CpuMoeAll => params.with_cpu_moe_all(),
            Placement::NCpuMoe(k) => params.with_cpu_moe(*k),
            Placement::Layers(list) => params.with_cpu_moe_layers(list.layers.iter().copied()),
        }
    }
}

/// The same greedy loop through the safe Rust API and through a native C program on
/// the same llama.cpp, interleaved, with Rust/native ratios for prefill and decode.
#[derive(Debug, clap::Parser)]
#[command(name = "bench_moe")]
struct Cli {
    /// Tiny synthetic qwen3moe, 1 warm-up + 1 repetition, 16 new tokens
    #[arg(long)]
    quick: bool,
    /// One JSON object on stdout instead of the Markdown tables
    #[arg(long)]
    json: bool,
    /// A GGUF file instead of the synthetic qwen3moe
    #[arg(short = 'm', long, value_name = "F")]
    model: Option<PathBuf>,
    /// Synthetic preset when no --model: tiny or small [default: small; --quick: tiny]
    #[arg(long, value_name = "P")]
    preset: Option<Preset>,
    /// Measured repetitions [default: 5; --quick: 1]
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Rounds run first and dropped
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: usize,
    /// Threads for prefill and decode
    #[arg(short = 't', long, value_name = "N", default_value_t = 2)]
    threads: i32,
    /// Tokens generated per run [default: 64; --quick: 16]
    #[arg(short = 'n', long, value_name = "N")]
    n_predict: Option<usize>,
    /// n_batch
    #[arg(short = 'b', long, value_name = "N", default_value_t = 512)]
    batch_size: u32,
    /// n_ubatch (-ub)
    #[arg(long, value_name = "N", default_value_t = 512)]
    ubatch_size: u32,
    /// n_ctx
    #[arg(short = 'c', long, value_name = "N", default_value_t = 4096)]
    ctx_size: u32,
    /// Layers on accelerators (-ngl): a count or `all` [default: llama.cpp's]
    #[arg(long, value_name = "N|all")]
    n_gpu_layers: Option<GpuLayers>,
    /// Comma-separated of short,medium,long,very-long [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_prompt)]
    prompts: Vec<(&'static str, usize)>,
    /// Also run with every layer's experts in host memory
    #[arg(long)]
    cpu_moe: bool,
    /// Also run with the first K layers' experts in host memory (repeatable)
    #[arg(long, value_name = "K")]
    n_cpu_moe: Vec<u32>,
    /// Also run with the experts of these layers in host memory, e.g. 36-47 (repeatable)
    #[arg(long, value_name = "LIST")]
    cpu_moe_layers: Vec<LayerList>,
    /// Skip the native baseline (Rust runs only)
    #[arg(long)]
    no_native: bool,
}

/// llama.cpp's single-dash multi-letter spellings of `bench_moe`'s flags.
const LLAMA_SPELLINGS: Spellings = &[("-ngl", "--n-gpu-layers"), ("-ub", "--ubatch-size")];

fn parse_prompt(name: &str) -> Result<(&'static str, usize), String> {
    PROMPTS
        .iter()
        .find(|(n, _)| *n == name)
        .copied()
        .ok_or_else(|| format!("unknown prompt {name:?}"))
}

/// The command line with `--quick`'s defaults applied and checked.
#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    json: bool,
    model: Option<PathBuf>,
    preset: Preset,
    reps: usize,
    warmup: usize,
    threads: i32,
    n_predict: usize,
    n_batch: u32,
    n_ubatch: u32,
    n_ctx: u32,
    ngl: Option<i32>,
    prompts: Vec<(&'static str, usize)>,
    placements: Vec<Placement>,
    native: bool,
}

impl Args {
    fn from_env() -> Args {
        let cli: Cli = cli::parse(LLAMA_SPELLINGS);
        Args::resolve(cli).unwrap_or_else(|msg| cli::usage_error("bench_moe", &msg))
    }

    fn resolve(cli: Cli) -> Result<Args, String> {
        let quick = cli.quick;
        let mut placements = vec![Placement::Default];
        if cli.cpu_moe {
            placements.push(Placement::CpuMoeAll);
        }
        placements.extend(cli.n_cpu_moe.into_iter().map(Placement::NCpuMoe));
        placements.extend(cli.cpu_moe_layers.into_iter().map(Placement::Layers));
        let args = Args {
            quick,
            json: cli.json,
            model: cli.model,
            preset: cli
                .preset
                .unwrap_or(if quick { Preset::Tiny } else { Preset::Small }),
            reps: cli.reps.unwrap_or(if quick { 1 } else { 5 }),
            warmup: cli.warmup,
            threads: cli.threads,
            n_predict: cli.n_predict.unwrap_or(if quick { 16 } else { 64 }),
            n_batch: cli.batch_size,
            n_ubatch: cli.ubatch_size,
            n_ctx: cli.ctx_size,
            ngl: cli
                .n_gpu_layers
                .map(GpuLayers::to_n_gpu_layers)
                .transpose()?,
            prompts: if cli.prompts.is_empty() {
                PROMPTS.to_vec()
            } else {
                cli.prompts
            },
            placements,
            native: !cli.no_native,
        };
        if args.reps == 0 || args.threads < 1 || args.n_predict < 2 || args.n_batch == 0 {
            return Err(
                "--reps, --threads and --batch-size must be positive, --n-predict at least 2"
                    .into(),
            );
        }
        Ok(args)
    }
}

/// One timed run, from either side; the three intervals of `bench_native.c`.
#[derive(Debug, Clone)]
struct Run {
    prompt_tokens: usize,
    prefill: Duration,
    ttft: Duration,
    gen_tokens: usize,
    decode: Duration,
    tokens: Vec<i32>,
}

impl Run {
    fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64()
    }

    /// The first token comes from the prefill, so the decode phase has one step fewer.
    fn decode_tps(&self) -> f64 {
        (self.gen_tokens - 1) as f64 / self.decode.as_secs_f64()
    }

    fn from_stats(stats: &GenerationStats, tokens: Vec<Token>) -> Run {
        Run {
            prompt_tokens: stats.prompt_tokens,
            prefill: stats.prefill_time,
            ttft: stats.ttft.unwrap_or_default(),
            gen_tokens: stats.generated_tokens,
            decode: stats.decode_time,
            tokens: tokens.iter().map(|t| t.0).collect(),
        }
    }

    fn from_native(line: &str) -> Result<Run, BoxError> {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("native baseline printed {line:?}: {e}"))?;
        let int = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("native baseline: no {k} in {line:?}"))
        };
        let us = |k: &str| int(k).map(Duration::from_micros);
        Ok(Run {
            prompt_tokens: int("prompt_tokens")? as usize,
            prefill: us("prefill_us")?,
            ttft: us("ttft_us")?,
            gen_tokens: int("gen_tokens")? as usize,
            decode: us("decode_us")?,
            tokens: v["tokens"]
                .as_array()
                .ok_or("native baseline: no tokens")?
                .iter()
                .map(|t| {
                    t.as_i64()
                        .map(|t| t as i32)
                        .ok_or("native baseline: bad token")
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The native baseline, loaded and waiting for "run" lines.
struct Native {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Native {
    fn start(
        args: &Args,
        model: &Path,
        prompt_file: &Path,
        ngl: i32,
        patterns: &[String],
    ) -> Result<Native, BoxError> {
        let mut child = Command::new(NATIVE_EXE)
            .arg(model)
            .arg(prompt_file)
            .args(
                [
                    args.n_predict.to_string(),
                    args.threads.to_string(),
                    args.n_batch.to_string(),
                    args.n_ubatch.to_string(),
                    args.n_ctx.to_string(),
                    ngl.to_string(),
                    "0".into(),
                ]
                .iter(),
            )
            .args(patterns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {NATIVE_EXE}: {e}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            let status = child.wait()?;
            return Err(format!("native baseline did not start ({status}): {line:?}").into());
        }
        Ok(Native {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self) -> Result<Run, BoxError> {
        let stdin = self.stdin.as_mut().expect("open until finish");
        stdin.write_all(b"run\n")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(format!("native baseline exited: {}", self.child.wait()?).into());
        }
        Run::from_native(line.trim())
    }

    fn finish(mut self) -> Result<(), BoxError> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("native baseline failed: {status}").into());
        }
        Ok(())
    }
}

/// Where streamed text goes: the null device, so each piece costs a real write system
/// call like a terminal or socket would, without flooding the output.
fn sink() -> Box<dyn Write> {
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    match std::fs::OpenOptions::new().write(true).open(null) {
        Ok(f) => Box::new(f),
        Err(_) => Box::new(std::io::sink()),
    }
}

fn context_params(args: &Args) -> ContextParams {
    ContextParams::default()
        .with_n_ctx(args.n_ctx)
        .with_n_batch(args.n_batch)
        .with_n_ubatch(args.n_ubatch)
        .with_n_threads(args.threads)
        .with_n_threads_batch(args.threads)
        // bench_native.c sets no_perf; llama.cpp's own counters are not needed here.
        .with_perf(false)
}

/// The Rust side of one round. Non-streaming: `Context::complete`, text written at the
/// end. Streaming: `Context::generate`, each token's text written and flushed as it comes.
fn rust_run(model: &Model, args: &Args, prompt: &[Token], stream: bool) -> Result<Run, BoxError> {
    let mut ctx = Context::new(model, &context_params(args))?;
    let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
    let params = GenerateParams::default()
        .with_max_tokens(args.n_predict)
        .with_stop_at_eog(false);
    let mut out = sink();
    if stream {
        let mut tokens = Vec::with_capacity(args.n_predict);
        let mut gen = ctx.generate(&mut sampler, prompt, params);
        for item in &mut gen {
            let item = item?;
            out.write_all(item.text.as_bytes())?;
            out.flush()?;
            tokens.push(item.token);
        }
        out.write_all(gen.flush().as_bytes())?;
        Ok(Run::from_stats(gen.stats(), tokens))
    } else {
        let done = ctx.complete(&mut sampler, prompt, params)?;
        out.write_all(done.text.as_bytes())?;
        out.flush()?;
        Ok(Run::from_stats(&done.stats, done.tokens))
    }
}

const VARIANTS: [&str; 3] = ["native", "rust", "rust-stream"];

/// All runs of one placement and prompt.
struct Cell {
    placement: String,
    prompt: &'static str,
    prompt_tokens: usize,
    runs: [Vec<Run>; 3],
    tokens_match: bool,
}

fn summary(runs: &[Run], f: impl Fn(&Run) -> f64) -> Option<Summary> {
    Summary::of(&runs.iter().map(f).collect::<Vec<_>>())
}

fn ratio(rust: &[Run], native: &[Run], f: impl Fn(&Run) -> f64 + Copy) -> Option<f64> {
    Some(summary(rust, f)?.median / summary(native, f)?.median)
}

fn measure(
    args: &Args,
    backend: &Backend,
    model_path: &Path,
) -> Result<(Vec<Cell>, String), BoxError> {
    let mut cells = Vec::new();
    let mut description = String::new();
    let dir = std::env::temp_dir().join(format!("bench-moe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for placement in &args.placements {
        let mut params = placement.apply(ModelParams::default());
        if let Some(ngl) = args.ngl {
            params = params.with_n_gpu_layers(ngl);
        }
        let ngl = params.n_gpu_layers();
        let patterns: Vec<String> = params
            .tensor_overrides()
            .map(|o| o.pattern().to_owned())
            .collect();
        let model = Model::load(backend, model_path, &params)?;
        description = model.description();
        let vocab = model.vocab();
        for &(prompt_name, min_tokens) in &args.prompts {
            let (text, prompt) = prompt_with_tokens(&vocab, min_tokens)?;
            if prompt.len() + args.n_predict > args.n_ctx as usize {
                return Err(format!(
                    "{prompt_name} prompt ({} tokens) + {} new tokens exceed --ctx-size {}",
                    prompt.len(),
                    args.n_predict,
                    args.n_ctx
                )
                .into());
            }
            let prompt_file = dir.join(format!("{prompt_name}.txt"));
            std::fs::write(&prompt_file, &text)?;
            let mut native = if args.native {
                Some(Native::start(
                    args,
                    model_path,
                    &prompt_file,
                    ngl,
                    &patterns,
                )?)
            } else {
                None
            };
            let mut runs: [Vec<Run>; 3] = Default::default();
            for round in 0..args.warmup + args.reps {
                let measured = round >= args.warmup;
                // A short pause lets the other side's idle worker threads stop spinning.
                std::thread::sleep(Duration::from_millis(20));
                if let Some(n) = native.as_mut() {
                    let r = n.run()?;
                    if measured {
                        runs[0].push(r);
                    }
                }
                for (i, stream) in [(1, false), (2, true)] {
                    std::thread::sleep(Duration::from_millis(20));
                    let r = rust_run(&model, args, &prompt, stream)?;
                    if measured {
                        runs[i].push(r);
                    }
                }
            }
            if let Some(n) = native {
                n.finish()?;
            }
            let reference = runs[1][0].tokens.clone();
            let tokens_match = runs
                .iter()
                .flatten()
                .all(|r| r.tokens == reference && r.prompt_tokens == prompt.len());
            if !tokens_match {
                eprintln!(
                    "WARNING: {} / {prompt_name}: generated tokens or prompt lengths differ between runs",
                    placement.label()
                );
            }
            cells.push(Cell {
                placement: placement.label(),
                prompt: prompt_name,
                prompt_tokens: prompt.len(),
                runs,
                tokens_match,
            });
            eprintln!(
                "done: {} / {prompt_name} ({} tokens)",
                placement.label(),
                prompt.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((cells, description))
}

fn summary_json(s: Option<Summary>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({"median": s.median, "min": s.min, "max": s.max}),
    )
}

fn ttft_ms(r: &Run) -> f64 {
    r.ttft.as_secs_f64() * 1e3
}

/// Rust/native ratios over all cells: the geometric mean of each cell's ratio of medians.
fn overall(cells: &[Cell], variant: usize) -> (Option<f64>, Option<f64>) {
    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for c in cells {
        pre.extend(ratio(&c.runs[variant], &c.runs[0], Run::prefill_tps));
        dec.extend(ratio(&c.runs[variant], &c.runs[0], Run::decode_tps));
    }
    (geomean(&pre), geomean(&dec))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn to_json(
    args: &Args,
    model: &Path,
    description: &str,
    cells: &[Cell],
    load: [&str; 2],
    wall: f64,
) -> Value {
    let (p, d) = overall(cells, 1);
    let (sp, sd) = overall(cells, 2);
    let rows: Vec<Value> = cells
        .iter()
        .flat_map(|c| {
            VARIANTS.iter().enumerate().filter(|(i, _)| !c.runs[*i].is_empty()).map(move |(i, v)| {
                let runs = &c.runs[i];
                json!({
                    "placement": c.placement,
                    "prompt": c.prompt,
                    "prompt_tokens": c.prompt_tokens,
                    "variant": v,
                    "gen_tokens": runs[0].gen_tokens,
                    "ttft_ms": summary_json(summary(runs, ttft_ms)),
                    "prefill_tps": summary_json(summary(runs, Run::prefill_tps)),
                    "decode_tps": summary_json(summary(runs, Run::decode_tps)),
                    "prefill_ratio": if i == 0 { Value::Null } else { json!(ratio(runs, &c.runs[0], Run::prefill_tps)) },
                    "decode_ratio": if i == 0 { Value::Null } else { json!(ratio(runs, &c.runs[0], Run::decode_tps)) },
                    "tokens_match": c.tokens_match,
                    "runs": runs.iter().map(|r| json!({
                        "prefill_us": r.prefill.as_micros() as u64,
                        "ttft_us": r.ttft.as_micros() as u64,
                        "decode_us": r.decode.as_micros() as u64,
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    json!({
        "rust_vs_native": {"prefill_ratio": p, "decode_ratio": d},
        "rust_stream_vs_native": {"prefill_ratio": sp, "decode_ratio": sd},
        "tokens_identical": cells.iter().all(|c| c.tokens_match),
        "config": {
            "model": model.display().to_string(),
            "model_description": description,
            "quick": args.quick,
            "threads": args.threads,
            "n_predict": args.n_predict,
            "n_batch": args.n_batch,
            "n_ubatch": args.n_ubatch,
            "n_ctx": args.n_ctx,
            "warmup": args.warmup,
            "reps": args.reps,
            "cpu": cpu_model(),
            "loadavg_before": load[0],
            "loadavg_after": load[1],
            "llama_cpp": llama_cpp_moe::LLAMA_CPP_VERSION,
            "wall_s": wall,
        },
        "rows": rows,
    })
}

fn fmt_summary(s: Option<Summary>, digits: usize) -> String {
    s.map_or("-".into(), |s| {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            s.median, s.min, s.max
        )
    })
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.3}"))
}

fn markdown(
    args: &Args,
    model: &Path,
    description: &str,
    cells: &[Cell],
    load: [&str; 2],
    wall: f64,
) -> String {
    let mut s = String::new();
    let (p, d) = overall(cells, 1);
    let (sp, sd) = overall(cells, 2);
    let _ = writeln!(s, "model: {} ({description})", model.display());
    let _ = writeln!(
        s,
        "cpu: {}; threads {}; n_batch {}; n_ubatch {}; n_ctx {}; {} new tokens; {} warm-up + {} measured rounds; load average {} -> {}; {wall:.0} s",
        cpu_model(), args.threads, args.n_batch, args.n_ubatch, args.n_ctx, args.n_predict, args.warmup, args.reps, load[0], load[1]
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| placement | prompt | tokens | variant | TTFT ms | prefill tok/s | decode tok/s | prefill ratio | decode ratio |");
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---:|");
    for c in cells {
        for (i, v) in VARIANTS.iter().enumerate() {
            let runs = &c.runs[i];
            if runs.is_empty() {
                continue;
            }
            let (pr, dr) = if i == 0 {
                (String::new(), String::new())
            } else {
                (
                    fmt_ratio(ratio(runs, &c.runs[0], Run::prefill_tps)),
                    fmt_ratio(ratio(runs, &c.runs[0], Run::decode_tps)),
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {v} | {} | {} | {} | {pr} | {dr} |",
                c.placement,
                c.prompt,
                c.prompt_tokens,
                fmt_summary(summary(runs, ttft_ms), 1),
                fmt_summary(summary(runs, Run::prefill_tps), 1),
                fmt_summary(summary(runs, Run::decode_tps), 1),
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Rust / native (geometric mean of the ratios of medians) | prefill | decode |"
    );
    let _ = writeln!(s, "|---|---:|---:|");
    let _ = writeln!(
        s,
        "| non-streaming (`Context::complete`) | {} | {} |",
        fmt_ratio(p),
        fmt_ratio(d)
    );
    let _ = writeln!(
        s,
        "| streaming (`Context::generate` + write per token) | {} | {} |",
        fmt_ratio(sp),
        fmt_ratio(sd)
    );
    let identical = cells.iter().all(|c| c.tokens_match);
    let _ = writeln!(
        s,
        "\ngenerated token ids identical across native, rust and rust-stream in every run: {}",
        if identical { "yes" } else { "NO" }
    );
    s
}

fn main() -> Result<(), BoxError> {
    let args = Args::from_env();
    let backend = Backend::init();
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => {
            eprintln!(
                "synthetic qwen3moe {} model (written on first use)",
                args.preset.name()
            );
            synthetic_model(Arch::Qwen3Moe, args.preset)?
        }
    };
    let load_before = loadavg();
    let t0 = Instant::now();
    let (cells, description) = measure(&args, &backend, &model_path)?;
    let wall = t0.elapsed().as_secs_f64();
    let load_after = loadavg();
    let load = [load_before.as_str(), load_after.as_str()];
    if args.json {
        println!(
            "{}",
            to_json(&args, &model_path, &description, &cells, load, wall)
        );
    } else {
        print!(
            "{}",
            markdown(&args, &model_path, &description, &cells, load, wall)
        );
    }
    if !cells.iter().all(|c| c.tokens_match) {
        return Err("generated tokens differ between the native and the Rust runs".into());
    }
    Ok(())
}
