//! `quality`: what a model says and how sure it is, under every expert placement.
//!
//! ```text
//! cargo run --release --example quality -- -m SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example quality -- -m model.gguf --rpc 127.0.0.1:50052 --json
//! ```
//! Four fixed prompts (a haiku, quantum computing, a Fibonacci function, gradient
//! descent) go through the model's chat template with greedy sampling; each answer gets
//! repetition metrics (distinct-2, the longest repeated n-gram, a loop flag). The
//! perplexity of a fixed English text is computed from the logits. All of it runs once
//! per placement, every layer on an RPC device (`--rpc`, or a loopback server this
//! program starts as a child process): no offload, `--cpu-moe`, `--n-cpu-moe` half, the
//! last half of the layers. It exits 1 when the tokens or the perplexity change with the
//! placement. The report names the CPU: greedy text and perplexity differ between CPUs
//! (ggml's kernels depend on AVX2, AVX-512, ...), never between placements.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use llama_cpp_moe::rpc::RpcServerConfig;
use llama_cpp_moe::{Backend, ErrorChain};
use llama_cpp_moe_cli as cli;
use llama_cpp_moe_examples::quality::{
    self, Machine, PlacementRun, LOOP_MIN_TOKENS, PERPLEXITY_TEXT, PERPLEXITY_TOLERANCE, PROMPTS,
};
use llama_cpp_moe_gguf::GgufFile;

/// Fixed prompts and a perplexity text through a model under every expert placement on
/// an RPC device; fails when tokens or perplexity depend on the placement.
#[derive(Debug, clap::Parser)]
#[command(name = "quality")]
struct Args {
    /// GGUF model
    #[arg(
        short = 'm',
        long = "model",
        value_name = "FILE",
        required_unless_present = "serve_rpc_port"
    )]
    model: Option<PathBuf>,
    /// RPC server to put the layers on (default: start one on loopback in this process)
    #[arg(long, value_name = "HOST:PORT")]
    rpc: Option<String>,
    /// Tokens to generate per prompt
    #[arg(short = 'n', long, value_name = "N", default_value_t = 96)]
    n_predict: usize,
    /// CPU threads (default: llama.cpp's choice)
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<i32>,
    /// Print one JSON object instead of the report
    #[arg(long)]
    json: bool,
    /// Print the report as Markdown (the golden samples in docs/quality-samples.md)
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// Show llama.cpp's log
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Internal: be the loopback RPC server on this port (how `quality` starts its own)
    #[arg(long, value_name = "PORT", hide = true)]
    serve_rpc_port: Option<u16>,
}

fn main() -> ExitCode {
    let args: Args = cli::parse(&[]);
    cli::init_logging(args.verbose);
    if !args.verbose {
        llama_cpp_moe::logging::set_silent(true);
    }
    if let Some(port) = args.serve_rpc_port {
        return serve_rpc(port, args.threads);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("quality: tokens or perplexity changed with the placement");
            ExitCode::FAILURE
        }
        Err(msg) => {
            eprintln!("quality: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every placement and prints the report; returns whether the placements agree.
fn run(a: &Args) -> Result<bool, String> {
    let model_path = a.model.as_ref().ok_or("no model (-m)")?;
    let backend = Backend::init();
    let server = match &a.rpc {
        Some(_) => None,
        None => Some(LoopbackServer::start(a.threads)?),
    };
    let endpoint = match (&a.rpc, &server) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(server)) => server.endpoint.clone(),
        (None, None) => unreachable!("a server is started when --rpc is absent"),
    };
    let devices = backend
        .add_rpc_server(&endpoint)
        .map_err(|e| format!("--rpc: {}", ErrorChain(&e)))?;
    let device = *devices
        .first()
        .ok_or_else(|| format!("the RPC server at {endpoint} serves no device"))?;
    let n_layer = GgufFile::open(model_path)
        .map_err(|e| ErrorChain(&e).to_string())?
        .block_count()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{} has no block count", model_path.display()))?;
    let mut runs = Vec::new();
    for (name, params) in quality::placements(n_layer, device) {
        if !a.json {
            eprintln!("quality: {name} ...");
        }
        let run = quality::run_placement(
            &backend,
            model_path,
            name.clone(),
            &params,
            a.n_predict,
            a.threads,
        )
        .map_err(|e| format!("{name}: {e}"))?;
        runs.push(run);
    }
    let model = model_path.display().to_string();
    let machine = Machine::current(&backend);
    if a.json {
        println!("{}", quality::to_json(&model, &machine, &runs));
    } else if a.markdown {
        print_markdown(&machine, &runs);
    } else {
        print_text(&model, &machine, &runs);
    }
    Ok(quality::compare(&runs).holds())
}

/// The RPC server half: serves this machine's CPU on loopback `port` until killed.
/// A separate process, so the server's own prints stay off the report's stdout.
fn serve_rpc(port: u16, threads: Option<i32>) -> ExitCode {
    // One thread unless told otherwise: the client computes too, and two thread pools
    // spinning on the same cores slow each other down badly.
    let threads = threads.and_then(|t| usize::try_from(t).ok()).unwrap_or(1);
    let config = RpcServerConfig::new("127.0.0.1", port)
        .device("CPU")
        .threads(threads);
    match config.serve(&Backend::init()) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("quality: loopback RPC server: {}", ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

/// This program again, as a loopback RPC server on a free port; killed on drop.
struct LoopbackServer {
    child: Child,
    endpoint: String,
}

impl LoopbackServer {
    fn start(threads: Option<i32>) -> Result<LoopbackServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut command = Command::new(exe);
        command.args(["--serve-rpc-port", &port.to_string()]);
        if let Some(t) = threads {
            command.args(["--threads", &t.to_string()]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the loopback RPC server: {e}"))?;
        let mut server = LoopbackServer {
            child,
            endpoint: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&server.endpoint).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("the loopback RPC server exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the loopback RPC server never listened on {}",
                    server.endpoint
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_text(model: &str, machine: &Machine, runs: &[PlacementRun]) {
    println!("model {model}");
    println!(
        "CPU {} (ggml CPU features: {})",
        machine.cpu,
        machine.ggml_cpu_features.join(", ")
    );
    println!(
        "{:<28} {:>14} {:>16} {:>12}",
        "placement", "RPC bytes", "experts on host", "perplexity"
    );
    for r in runs {
        println!(
            "{:<28} {:>14} {:>16} {:>12.4}",
            r.placement, r.device_bytes, r.experts_on_host_bytes, r.perplexity
        );
    }
    let agreement = quality::compare(runs);
    println!(
        "tokens identical across placements: {}; largest perplexity difference: {:.2e} (tolerance {PERPLEXITY_TOLERANCE:.0e})",
        agreement.tokens_identical, agreement.max_perplexity_rel_diff
    );
    let Some(first) = runs.first() else { return };
    for s in &first.samples {
        println!(
            "\n--- {} ({} tokens, distinct-2 {:.3}, longest repeat {}, {})",
            s.prompt,
            s.tokens.len(),
            s.repetition.distinct_2,
            s.repetition.longest_repeat,
            if s.repetition.looping {
                "LOOPS"
            } else {
                "no loop"
            }
        );
        println!("{}", s.text.trim_end());
    }
}

fn print_markdown(machine: &Machine, runs: &[PlacementRun]) {
    let agreement = quality::compare(runs);
    println!(
        "CPU: **{}** (ggml CPU features: {}). Greedy text and perplexity depend on the CPU.\n",
        machine.cpu,
        machine.ggml_cpu_features.join(", ")
    );
    println!("| placement | bytes on the RPC device | experts in host memory | perplexity |");
    println!("|---|---:|---:|---:|");
    for r in runs {
        println!(
            "| `{}` | {} | {} | {:.4} |",
            r.placement, r.device_bytes, r.experts_on_host_bytes, r.perplexity
        );
    }
    println!(
        "\nTokens identical across placements: **{}**; largest relative perplexity difference: {:.2e}.",
        agreement.tokens_identical, agreement.max_perplexity_rel_diff
    );
    println!("\nPerplexity text:\n\n> {PERPLEXITY_TEXT}");
    let Some(first) = runs.first() else { return };
    println!(
        "\n| prompt | tokens | distinct-2 | longest repeat | loops (≥{LOOP_MIN_TOKENS} tokens) |"
    );
    println!("|---|---:|---:|---:|---|");
    for s in &first.samples {
        println!(
            "| {} | {} | {:.3} | {} | {} |",
            s.prompt,
            s.tokens.len(),
            s.repetition.distinct_2,
            s.repetition.longest_repeat,
            if s.repetition.looping { "yes" } else { "no" }
        );
    }
    for (s, (_, prompt)) in first.samples.iter().zip(PROMPTS) {
        // Four backticks: an answer may hold a code block of its own.
        println!(
            "\n### {}\n\n> {prompt}\n\n````text\n{}\n````",
            s.prompt,
            s.text.trim_end()
        );
    }
}
