//! `bench_http`: what HTTP and SSE cost on top of the library, and how `moe_server`
//! behaves under concurrent load.
//!
//! ```text
//! cargo build --release -p llama-cpp-moe-server --bin moe_server   # bench_http starts it
//! cargo run --release -p llama-cpp-moe-server --example bench_http            # tiny synthetic model
//! ```
//!
//! Part 1 sends `bench_moe`'s four prompts (short, medium, long, very long) one at a time
//! to a `moe_server --parallel 1`, streamed and not, and runs the same prompts through the
//! library in this process, interleaved, after warm-up rounds: TTFT at the client (first
//! content), total time, tokens from `usage` (never estimated), tok/s, and the ratios to
//! the library. Greedy sampling with `ignore_eos`, so every run produces the same tokens.
//!
//! Part 2 (the load run) starts `moe_server --parallel 16` and keeps 1, 4 and 16 clients
//! busy for a fixed time each: requests/s, aggregate tok/s, p50/p99 TTFT and latency,
//! errors, the server's RSS before and after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use llama_cpp_moe::{Backend, Context, ContextParams, GenerateParams, Model, ModelParams};
use llama_cpp_moe::{ErrorChain, SamplerBuilder, Token};
use llama_cpp_moe_benches::{prompt_with_tokens, synthetic_model, Summary, PROMPTS};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use serde_json::{json, Value};
use support::ServerProcess;

#[path = "../tests/support/mod.rs"]
mod support;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP and SSE overhead against the library, and a concurrent load run, on moe_server.
#[derive(Debug, Parser)]
#[command(name = "bench_http")]
struct Args {
    /// GGUF model (default: the synthetic qwen3moe model of --preset)
    #[arg(short = 'm', long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Synthetic preset when no -m: tiny or small
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// Threads, for the server and the library alike
    #[arg(short = 't', long, default_value_t = 2)]
    threads: i32,
    /// Tokens to generate per request
    #[arg(short = 'n', long, default_value_t = 32)]
    n_predict: usize,
    /// Context of one sequence
    #[arg(short = 'c', long, default_value_t = 4096)]
    ctx_size: u32,
    /// Timed rounds per prompt and mode
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed rounds first
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seconds per load level (0: no load run)
    #[arg(long, default_value_t = 10.0)]
    load_seconds: f64,
    /// Concurrent clients of the load levels
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Sequences of the load run's server (--parallel)
    #[arg(long, default_value_t = 16)]
    load_parallel: u32,
}

fn main() {
    let args = Args::parse();
    llama_cpp_moe::logging::set_silent(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(&args)) {
        eprintln!("bench_http: error: {}", ErrorChain(&*e));
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), BoxError> {
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => synthetic_model(Arch::Qwen3Moe, args.preset)?,
    };
    println!("# bench_http\n");
    println!(
        "model `{}`, {} threads, {} tokens per request (greedy, ignore_eos), {} reps after {} warm-up",
        model_path.display(),
        args.threads,
        args.n_predict,
        args.reps,
        args.warmup
    );
    println!("load average at start: {}\n", load_average());
    overhead(args, &model_path).await?;
    if args.load_seconds > 0.0 {
        load_run(args, &model_path).await?;
    }
    println!("\nload average at end: {}", load_average());
    Ok(())
}

/// The three ways one prompt is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Library,
    Whole,
    Stream,
}

const MODES: [Mode; 3] = [Mode::Library, Mode::Whole, Mode::Stream];

/// One timed request.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// First content seen by the caller (for a whole answer: the whole answer).
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

impl Timing {
    fn tok_per_s(&self) -> f64 {
        self.tokens as f64 / self.total.as_secs_f64()
    }
}

async fn overhead(args: &Args, model_path: &Path) -> Result<(), BoxError> {
    let server = Server::start(model_path, args, 1, args.ctx_size).await?;
    let backend = Backend::init();
    let params = ModelParams::default();
    let model = Model::load(&backend, model_path, &params)?;
    let vocab = model.vocab();
    println!("## HTTP and SSE against the library (moe_server --parallel 1)\n");
    println!("| prompt | tokens in | mode | TTFT ms (median [min, max]) | total ms (median [min, max]) | tokens out | tok/s | total / library | TTFT / library |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(name, min_tokens) in PROMPTS {
        let (text, tokens) = prompt_with_tokens(&vocab, min_tokens)?;
        if tokens.len() + args.n_predict > args.ctx_size as usize {
            eprintln!("skipping {name}: prompt + tokens exceed -c");
            continue;
        }
        let mut timings: [Vec<Timing>; 3] = Default::default();
        for round in 0..args.warmup + args.reps {
            for (i, mode) in MODES.into_iter().enumerate() {
                let t = match mode {
                    Mode::Library => library_run(&model, args, &tokens)?,
                    Mode::Whole => server.completion(&text, args.n_predict, false).await?,
                    Mode::Stream => server.completion(&text, args.n_predict, true).await?,
                };
                if round >= args.warmup {
                    timings[i].push(t);
                }
            }
        }
        let library_total = median(&timings[0], |t| ms(t.total));
        let library_ttft = median(&timings[0], |t| ms(t.ttft));
        for (i, mode) in MODES.into_iter().enumerate() {
            let runs = &timings[i];
            let tokens_out = runs.first().map_or(0, |t| t.tokens);
            let consistent = runs.iter().all(|t| t.tokens == tokens_out);
            println!(
                "| {name} | {} | {} | {} | {} | {}{} | {:.1} | {:.3} | {:.3} |",
                tokens.len(),
                match mode {
                    Mode::Library => "library",
                    Mode::Whole => "HTTP whole",
                    Mode::Stream => "HTTP SSE",
                },
                spread(runs, |t| ms(t.ttft)),
                spread(runs, |t| ms(t.total)),
                tokens_out,
                if consistent { "" } else { " (varies!)" },
                median(runs, Timing::tok_per_s),
                median(runs, |t| ms(t.total)) / library_total,
                median(runs, |t| ms(t.ttft)) / library_ttft,
            );
        }
    }
    println!();
    Ok(())
}

/// The library, streaming (`Context::generate`), timed from the call to the first text
/// and to the end; the context is created before the clock starts, as the server's is.
fn library_run(model: &Model, args: &Args, prompt: &[Token]) -> Result<Timing, BoxError> {
    let params = ContextParams::default()
        .with_n_ctx(args.ctx_size)
        .with_n_threads(args.threads)
        .with_n_threads_batch(args.threads);
    let mut ctx = Context::new(model, &params)?;
    let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
    let params = GenerateParams::default()
        .with_max_tokens(args.n_predict)
        .with_stop_at_eog(false);
    let started = Instant::now();
    let mut ttft = None;
    let mut tokens = 0;
    let mut generation = ctx.generate(&mut sampler, prompt, params);
    for item in &mut generation {
        let item = item?;
        tokens += 1;
        if ttft.is_none() && !item.text.is_empty() {
            ttft = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    Ok(Timing {
        ttft: ttft.unwrap_or(total),
        total,
        tokens,
    })
}

/// A `moe_server --parallel N` for the runs, whose sequences hold `ctx_per_seq` tokens
/// each; killed on drop.
struct Server(ServerProcess);

impl Server {
    async fn start(
        model: &Path,
        args: &Args,
        parallel: u32,
        ctx_per_seq: u32,
    ) -> Result<Server, BoxError> {
        let exe = built_moe_server()?;
        if !exe.exists() {
            return Err(format!(
                "no {} (build it: cargo build --release -p llama-cpp-moe-server --bin moe_server)",
                exe.display()
            )
            .into());
        }
        let threads = args.threads.to_string();
        let parallel_arg = parallel.to_string();
        let ctx = (ctx_per_seq * parallel).to_string();
        let flags = [
            "--queue",
            "256",
            "-t",
            &threads,
            "--parallel",
            &parallel_arg,
            "-c",
            &ctx,
        ];
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(64)
            .build()?;
        let process =
            ServerProcess::start(&exe, model, &flags, http, Duration::from_secs(300)).await?;
        Ok(Server(process))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    async fn completion(
        &self,
        prompt: &str,
        max_tokens: usize,
        stream: bool,
    ) -> Result<Timing, BoxError> {
        timed_completion(&self.0.http, &self.0.base, prompt, max_tokens, stream).await
    }
}

/// The `moe_server` cargo built beside this program: `target/<profile>/moe_server`, next
/// to `target/<profile>/examples/bench_http`.
fn built_moe_server() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    Ok(dir.join(format!("moe_server{}", std::env::consts::EXE_SUFFIX)))
}

/// One `/v1/completions` request timed at the client: TTFT at the first chunk with
/// text (streaming) or at the whole answer, tokens from `usage`.
async fn timed_completion(
    http: &reqwest::Client,
    base: &str,
    prompt: &str,
    max_tokens: usize,
    stream: bool,
) -> Result<Timing, BoxError> {
    let body = json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
        "stream": stream, "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let mut response = http
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    if response.status() != 200 {
        return Err(format!("HTTP {}: {}", response.status(), response.text().await?).into());
    }
    if !stream {
        let value: Value = serde_json::from_str(&response.text().await?)?;
        let total = started.elapsed();
        return Ok(Timing {
            ttft: total,
            total,
            tokens: usage_tokens(&value)?,
        });
    }
    let mut buffer = String::new();
    let mut ttft = None;
    let mut tokens = None;
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                let total = started.elapsed();
                return Ok(Timing {
                    ttft: ttft.unwrap_or(total),
                    total,
                    tokens: tokens.ok_or("no usage chunk")?,
                });
            }
            let value: Value = serde_json::from_str(data)?;
            if value.get("error").is_some() {
                return Err(format!("stream error: {value}").into());
            }
            if value["usage"].is_object() {
                tokens = Some(usage_tokens(&value)?);
            } else if ttft.is_none()
                && value["choices"][0]["text"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            {
                ttft = Some(started.elapsed());
            }
        }
    }
    Err("the stream ended without [DONE]".into())
}

fn usage_tokens(value: &Value) -> Result<usize, BoxError> {
    Ok(value["usage"]["completion_tokens"]
        .as_u64()
        .ok_or_else(|| format!("no usage in {value}"))? as usize)
}

/// 1, 4, 16 clients, each sending streamed requests back to back for `--load-seconds`.
async fn load_run(args: &Args, model_path: &Path) -> Result<(), BoxError> {
    // Short prompts, so that the run measures concurrent decoding more than prefill.
    let prompt = "Describe how a mixture-of-experts layer routes each token to its experts.";
    let server = Server::start(model_path, args, args.load_parallel, 1024).await?;
    println!(
        "## Load run (moe_server --parallel {}, streamed requests of {} tokens, {:.0} s per level)\n",
        args.load_parallel, args.n_predict, args.load_seconds
    );
    println!("| clients | requests | req/s | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | latency p50 ms | latency p99 ms | errors | server RSS before → after |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut total_errors = 0;
    for &clients in &args.clients {
        let rss_before = rss_kib(server.pid());
        let deadline = Instant::now() + Duration::from_secs_f64(args.load_seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let http = server.0.http.clone();
            let base = server.0.base.clone();
            let n = args.n_predict;
            tasks.push(tokio::spawn(async move {
                let mut timings = Vec::new();
                let mut errors = Vec::new();
                while Instant::now() < deadline {
                    match timed_completion(&http, &base, prompt, n, true).await {
                        Ok(t) => timings.push(t),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (timings, errors)
            }));
        }
        let mut timings = Vec::new();
        let mut errors = Vec::new();
        for task in tasks {
            let (t, e) = task.await?;
            timings.extend(t);
            errors.extend(e);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let tokens: usize = timings.iter().map(|t| t.tokens).sum();
        let ttft: Vec<f64> = timings.iter().map(|t| ms(t.ttft)).collect();
        let latency: Vec<f64> = timings.iter().map(|t| ms(t.total)).collect();
        println!(
            "| {clients} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} → {} MiB |",
            timings.len(),
            timings.len() as f64 / elapsed,
            tokens as f64 / elapsed,
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0),
            percentile(&latency, 50.0),
            percentile(&latency, 99.0),
            errors.len(),
            rss_before / 1024,
            rss_kib(server.pid()) / 1024,
        );
        if let Some(e) = errors.first() {
            eprintln!(
                "bench_http: {} errors with {clients} clients; first: {e}",
                errors.len()
            );
        }
        total_errors += errors.len();
    }
    if total_errors > 0 {
        return Err(format!("{total_errors} failed requests in the load run").into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(runs: &[Timing], f: impl Fn(&Timing) -> f64) -> f64 {
    Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median)
}

fn spread(runs: &[Timing], f: impl Fn(&Timing) -> f64) -> String {
    Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).map_or("n/a".into(), |s| {
        format!("{:.1} [{:.1}, {:.1}]", s.median, s.min, s.max)
    })
}

/// The `p`-th percentile, nearest rank.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Resident memory of process `pid` in KiB (Linux; 0 elsewhere).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}
