//! Long runs: repeated load → context → generate → free cycles must not leak memory or
//! file descriptors, on the CPU and through the RPC device; eight threads with their own
//! contexts on one shared model must keep producing the same greedy text.
//!
//! `cargo test` runs short versions. The figures of record come from the long ones
//! (`scripts/long-run.sh`: 200 cycles, one minute of threads, release build):
//! `LLAMA_CPP_MOE_CYCLES=200 LLAMA_CPP_MOE_SOAK_SECS=60 cargo test --release
//! -p llama-cpp-moe --test long_run -- --nocapture --test-threads 1`.
//! Each test prints one `long_run:` line with its figures.

mod ctx_support;
mod model_support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ctx_support::greedy_in_context;
use llama_cpp_moe::model::OverrideTarget;
use llama_cpp_moe::{Backend, ContextParams, Model, ModelParams, Token};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, model, rpc_endpoint};

/// Growth of the resident set allowed between the end of the warm-up and the last cycle.
const RSS_BUDGET_BYTES: u64 = 2 << 20;
/// Tokens generated per cycle.
const TOKENS_PER_CYCLE: usize = 32;

/// The tests of this binary measure the whole process: they must not overlap.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`, in KiB).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// Open file descriptors of this process, settled: the fewest seen over half a second.
/// The in-process RPC server closes its end of a connection on its own thread, a moment
/// after the client hung up; a single reading would race with it.
fn open_fds() -> usize {
    (0..25)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .count()
        })
        .min()
        .expect("25 readings")
}

fn ctx_params() -> ContextParams {
    ContextParams::default()
        .with_n_ctx(128)
        .with_n_batch(64)
        .with_n_ubatch(64)
        .with_n_threads(2)
}

/// Greedy `n` tokens after a fixed prompt, in a fresh context.
fn greedy(model: &Model, params: &ContextParams, n: usize) -> Vec<Token> {
    let tokens = greedy_in_context(model, params, "The experts stay in host memory", n);
    assert_eq!(tokens.len(), n);
    tokens
}

struct CycleFigures {
    cycles: u64,
    warm_up: u64,
    rss_after_warm_up: u64,
    rss_end: u64,
    fds_after_warm_up: usize,
    fds_end: usize,
    elapsed: Duration,
}

/// Runs `load → context → generate 32 tokens → free` cycles, checking every cycle
/// generates the first cycle's tokens, and measures RSS and fds after the warm-up
/// (allocator arenas, ggml's one-time tables, the RPC connection) and at the end.
fn cycles(backend: &Backend, params: &ModelParams) -> CycleFigures {
    let path = model(Arch::Qwen3Moe);
    let cycles = env_number("LLAMA_CPP_MOE_CYCLES", 12).max(4);
    let warm_up = (cycles / 4).clamp(2, 20);
    let ctx = ctx_params();
    let start = Instant::now();
    let mut reference = None;
    let (mut rss_after_warm_up, mut fds_after_warm_up) = (0, 0);
    for cycle in 0..cycles {
        let model = Model::load(backend, &path, params).expect("load");
        let tokens = greedy(&model, &ctx, TOKENS_PER_CYCLE);
        drop(model);
        match &reference {
            None => reference = Some(tokens),
            Some(r) => assert_eq!(&tokens, r, "cycle {cycle} generated other tokens"),
        }
        if cycle + 1 == warm_up {
            rss_after_warm_up = rss_bytes();
            fds_after_warm_up = open_fds();
        }
    }
    CycleFigures {
        cycles,
        warm_up,
        rss_after_warm_up,
        rss_end: rss_bytes(),
        fds_after_warm_up,
        fds_end: open_fds(),
        elapsed: start.elapsed(),
    }
}

fn report_and_check(label: &str, f: &CycleFigures) {
    let growth = f.rss_end as i64 - f.rss_after_warm_up as i64;
    println!(
        "long_run: {label}: {} cycles ({} warm-up) of load/context/generate {TOKENS_PER_CYCLE}/free \
         in {:.1} s; RSS {:.2} MiB after warm-up, {:.2} MiB at end, growth {:+.3} MiB; \
         open fds {} -> {}",
        f.cycles,
        f.warm_up,
        f.elapsed.as_secs_f64(),
        f.rss_after_warm_up as f64 / 1048576.0,
        f.rss_end as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        f.fds_after_warm_up,
        f.fds_end,
    );
    assert!(
        growth < RSS_BUDGET_BYTES as i64,
        "{label}: RSS grew {growth} bytes over {} cycles",
        f.cycles - f.warm_up
    );
    assert_eq!(
        f.fds_end, f.fds_after_warm_up,
        "{label}: file descriptors leaked"
    );
}

#[test]
fn cpu_cycles_with_overrides_do_not_leak() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let backend = backend();
    // Experts of layer 0 through --n-cpu-moe, the rest through an explicit -ot.
    let params = ModelParams::default()
        .with_n_gpu_layers(0)
        .with_cpu_moe(1)
        .with_tensor_override(r"blk\.1\.ffn_.*_exps", OverrideTarget::Cpu);
    report_and_check("cpu + overrides", &cycles(&backend, &params));
}

#[test]
fn rpc_cycles_do_not_leak() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let backend = backend();
    // Our own RPC server in this process serves the CPU: its buffers count too.
    let endpoint = rpc_endpoint(&backend);
    let rpc = backend
        .devices()
        .into_iter()
        .find(|d| d.name().starts_with("RPC"))
        .expect("RPC device");
    // Every layer on the RPC device except the routed experts, which stay on the host.
    let params = ModelParams::default()
        .with_devices([rpc])
        .with_all_gpu_layers()
        .with_cpu_moe_all();
    report_and_check(
        &format!("rpc {endpoint} + cpu_moe_all"),
        &cycles(&backend, &params),
    );
}

#[test]
fn eight_threads_share_one_model() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const THREADS: usize = 8;
    const TOKENS: usize = 16;
    let backend = backend();
    let model = Model::load(
        &backend,
        model(Arch::Qwen3Moe),
        &ModelParams::default()
            .with_n_gpu_layers(0)
            .with_cpu_moe_all(),
    )
    .expect("load");
    let duration = Duration::from_secs(env_number("LLAMA_CPP_MOE_SOAK_SECS", 2));
    let ctx = ctx_params().with_n_threads(1);
    let reference = greedy(&model, &ctx, TOKENS);
    let start = Instant::now();
    let runs: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (model, ctx, reference) = (&model, &ctx, &reference);
                s.spawn(move || {
                    let mut runs = 0;
                    // Each thread finishes at least one generation, however loaded the machine.
                    while runs == 0 || start.elapsed() < duration {
                        let tokens = greedy(model, ctx, TOKENS);
                        assert_eq!(&tokens, reference, "thread {i}, run {runs}");
                        runs += 1;
                    }
                    runs
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    println!(
        "long_run: {THREADS} threads x own contexts on one model for {:.1} s: {} generations \
         of {TOKENS} tokens ({runs:?} per thread), all identical to the single-thread reference",
        start.elapsed().as_secs_f64(),
        runs.iter().sum::<usize>(),
    );
    assert!(runs.iter().all(|&r| r > 0));
}
