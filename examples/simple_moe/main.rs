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
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use llama_cpp_moe::context::FlashAttention;
use llama_cpp_moe::gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe::gguf::GgufFile;
use llama_cpp_moe::model::{regex_search, OverrideKind, OverrideTarget, Placement};
use llama_cpp_moe::{
    Backend, Context, ContextParams, DeviceType, GenerateParams, Model, ModelParams, SamplerBuilder,
};
use llama_cpp_moe_examples::simple_moe_args::{self as args, Args, GpuLayers};
use serde_json::json;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    }
    let list_devices = argv.iter().any(|a| a == "--list-devices");
    let argv: Vec<String> = argv.into_iter().filter(|a| a != "--list-devices").collect();
    let parsed = match args::parse(&argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("simple_moe: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(parsed, list_devices) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("simple_moe: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Everything `run` reports, in one place so text and JSON output agree.
struct Report {
    model_path: PathBuf,
    synthetic: bool,
    load_time: Duration,
}

fn run(a: Args, list_devices: bool) -> Result<(), String> {
    StderrLogger::install(a.verbose);
    if !a.verbose {
        llama_cpp_moe::log::set_silent(true);
    }
    let backend = Backend::init();
    for endpoint in &a.rpc {
        backend
            .add_rpc_server(endpoint)
            .map_err(|e| format!("--rpc {endpoint}: {e}"))?;
    }
    if list_devices {
        for dev in backend.devices() {
            let (free, total) = dev.memory();
            println!(
                "{:<28} {:<10} {:<40} {} free / {} total",
                dev.name(),
                format!("{:?}", dev.device_type()),
                dev.description(),
                mib(free),
                mib(total)
            );
        }
        // A backend compiled in but without devices (CUDA on a machine without an
        // NVIDIA GPU or driver) is not an error: say so and carry on with the CPU.
        // RPC has no devices until --rpc adds servers.
        for reg in backend.registries() {
            if reg.device_count == 0 && reg.name != "RPC" {
                println!(
                    "no {0} device found: the {0} backend is built in, but this machine has \
                     no usable {0} device (for CUDA: no NVIDIA GPU or driver; -v shows why); \
                     the CPU still works",
                    reg.name
                );
            }
        }
        return Ok(());
    }

    let interactive = std::io::stderr().is_terminal() && !a.json;
    let (model_path, synthetic) = match &a.model {
        Some(p) => (p.clone(), false),
        None => (synthetic_model(&a.synthetic, interactive)?, true),
    };
    let params = model_params(&a, &backend, interactive)?;

    let started = Instant::now();
    let model = Model::load(&backend, &model_path, &params)
        .map_err(|e| format!("loading {}: {e}", model_path.display()))?;
    let report = Report {
        model_path,
        synthetic,
        load_time: started.elapsed(),
    };

    let mut cparams = ContextParams::default()
        .with_n_ctx(a.ctx_size)
        .with_n_batch(a.batch_size)
        .with_n_ubatch(a.ubatch_size)
        .with_op_offload(!a.no_op_offload)
        .with_flash_attention(match a.flash_attn {
            Some(true) => FlashAttention::Enabled,
            Some(false) => FlashAttention::Disabled,
            None => FlashAttention::Auto,
        });
    if let Some(t) = a.threads {
        cparams = cparams.with_n_threads(t);
    }
    let mut ctx = Context::new(&model, &cparams).map_err(|e| format!("creating context: {e}"))?;
    let vocab = model.vocab();
    let mut sampler = if a.temp <= 0.0 {
        SamplerBuilder::new().greedy(&vocab)
    } else {
        let mut b = SamplerBuilder::new();
        if let Some(k) = a.top_k {
            b = b.top_k(k);
        }
        if let Some(p) = a.top_p {
            b = b.top_p(p, 1);
        }
        if let Some(p) = a.min_p {
            b = b.min_p(p, 1);
        }
        b.temp(a.temp).dist(&vocab, a.seed)
    }
    .map_err(|e| format!("sampler: {e}"))?;

    let prompt = vocab
        .tokenize(&a.prompt, true, true)
        .map_err(|e| format!("tokenizing the prompt: {e}"))?;
    if report.synthetic && !a.json {
        eprintln!(
            "note: synthetic model with random weights: the text below is gibberish; \
             the placement and the speed are real"
        );
    }

    let stream = !a.no_stream && !a.json;
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut generation = ctx.generate(
        &mut sampler,
        &prompt,
        GenerateParams::default().with_max_tokens(a.n_predict as usize),
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
    let stats = generation.stats().clone();
    drop(generation);
    if stream {
        let _ = writeln!(stdout);
    } else if !a.json {
        let _ = writeln!(stdout, "{text}");
    }

    let placement = model.placement();
    let experts = placement.experts_on_host();
    let breakdown = ctx
        .memory_breakdown()
        .map_err(|e| format!("memory breakdown: {e}"))?;
    let saved = device_bytes_saved(
        &a,
        &backend,
        &model,
        &placement,
        &params,
        &report.model_path,
    )?;
    let cpu_moe_layers = cpu_moe_layers(&params, model.n_layer());
    let overrides: Vec<_> = params
        .tensor_overrides()
        .map(|o| json!({"pattern": o.pattern(), "buft": target_name(o.target())}))
        .collect();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ttft_ms = stats.ttft.map(ms);
    let prompt_tps = stats.prefill_tokens_per_second();
    let gen_tps = stats.decode_tokens_per_second();

    if a.json {
        let out = json!({
            "model": {
                "path": report.model_path.display().to_string(),
                "synthetic": report.synthetic,
                "arch": model.arch(),
                "description": model.description(),
                "n_layer": model.n_layer(),
                "n_expert": model.n_expert(),
                "n_expert_used": model.n_expert_used(),
                "n_params": model.n_params(),
                "size_bytes": model.size(),
            },
            "offload": {
                "n_gpu_layers": params.n_gpu_layers(),
                "cpu_moe_layers": cpu_moe_layers,
                "overrides": overrides,
            },
            "placement": breakdown.iter().map(|r| json!({
                "buft": r.buffer_type,
                "is_host": r.is_host,
                "model_bytes": r.model_bytes,
                "context_bytes": r.context_bytes,
                "compute_bytes": r.compute_bytes,
            })).collect::<Vec<_>>(),
            "tensors_by_buft": placement.totals().iter().map(|(buft, t)| json!({
                "buft": buft, "tensors": t.count, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "experts_on_host": {"tensors": experts.count, "bytes": experts.bytes},
            "device_bytes_saved": saved,
            "timing": {
                "load_ms": ms(report.load_time),
                "ttft_ms": ttft_ms,
                "prompt_tokens": stats.prompt_tokens,
                "prompt_tps": prompt_tps,
                "gen_tokens": stats.generated_tokens,
                "gen_tps": gen_tps,
            },
            "text": text,
            "tokens": tokens,
        });
        let _ = writeln!(stdout, "{out}");
        return Ok(());
    }

    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1} {unit}"));
    eprintln!();
    eprintln!(
        "model      {} ({})",
        report.model_path.display(),
        model.description()
    );
    eprintln!(
        "           arch {}, {} layers, {} experts ({} used), {} params, {}",
        model.arch().unwrap_or_default(),
        model.n_layer(),
        model.n_expert(),
        model.n_expert_used(),
        model.n_params(),
        mib(model.size() as usize)
    );
    eprintln!("load       {:.0} ms", ms(report.load_time));
    eprintln!("TTFT       {}", opt(ttft_ms, "ms"));
    eprintln!(
        "prefill    {} tokens, {}",
        stats.prompt_tokens,
        opt(prompt_tps, "tok/s")
    );
    eprintln!(
        "decode     {} tokens, {}",
        stats.generated_tokens,
        opt(gen_tps, "tok/s")
    );
    eprintln!();
    eprintln!(
        "{:<32} {:>12} {:>12} {:>12}",
        "buffer type", "model", "KV/context", "compute"
    );
    for r in &breakdown {
        eprintln!(
            "{:<32} {:>12} {:>12} {:>12}",
            r.buffer_type,
            mib(r.model_bytes),
            mib(r.context_bytes),
            mib(r.compute_bytes)
        );
    }
    eprintln!();
    eprintln!(
        "experts on host: {} tensors, {}; device bytes saved vs no offload: {}",
        experts.count,
        mib(experts.bytes),
        mib(saved as usize)
    );
    if !has_accelerator(&a, &backend) {
        eprintln!("(no accelerator in use: everything is in host memory anyway; try --rpc)");
    }
    Ok(())
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn target_name(target: &OverrideTarget) -> String {
    match target {
        OverrideTarget::Cpu => "CPU".to_owned(),
        OverrideTarget::Device(d) => d.name(),
        OverrideTarget::BufferType(b) => b.name(),
        OverrideTarget::Named(n) => n.clone(),
        _ => format!("{target:?}"),
    }
}

fn model_params(a: &Args, backend: &Backend, progress: bool) -> Result<ModelParams, String> {
    let mut p = ModelParams::default();
    match a.n_gpu_layers {
        Some(GpuLayers::All) => p = p.with_all_gpu_layers(),
        Some(GpuLayers::Count(n)) => {
            p = p.with_n_gpu_layers(i32::try_from(n).map_err(|_| format!("-ngl {n} is too large"))?)
        }
        None => {}
    }
    if !a.devices.is_empty() {
        let mut devices = Vec::new();
        for name in &a.devices {
            let dev = backend.device_by_name(name).ok_or_else(|| {
                let names: Vec<String> = backend.devices().iter().map(|d| d.name()).collect();
                format!("unknown device {name:?}; available: {}", names.join(", "))
            })?;
            devices.push(dev);
        }
        p = p.with_devices(devices);
    }
    // Same order as llama.cpp: explicit -ot entries first, then the MoE/FFN options.
    for o in &a.overrides {
        p = p.with_tensor_override(o.pattern.clone(), OverrideTarget::Named(o.buft.clone()));
    }
    if a.cpu_moe {
        p = p.with_cpu_moe_all();
    }
    if let Some(n) = a.n_cpu_moe {
        p = p.with_cpu_moe(n);
    }
    if let Some(layers) = &a.cpu_moe_layers {
        p = p.with_cpu_moe_layers(layers.iter().copied());
    }
    if let Some(n) = a.n_cpu_ffn {
        p = p.with_cpu_ffn(n);
    }
    if progress {
        let bar = indicatif::ProgressBar::new(1000).with_message("loading");
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent}%")
                .expect("static template"),
        );
        p = p.with_progress_callback(move |f| {
            bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
            if f >= 1.0 {
                bar.finish_and_clear();
            }
            true
        });
    }
    p.validate(backend).map_err(|e| e.to_string())?;
    Ok(p)
}

/// The layers whose routed experts the options keep in host memory (clamped to the model).
fn cpu_moe_layers(params: &ModelParams, n_layer: u32) -> Vec<u32> {
    let mut layers: Vec<u32> = params
        .tensor_overrides()
        .flat_map(|o| match o.kind() {
            OverrideKind::Experts { layer: Some(l) } => vec![l],
            OverrideKind::Experts { layer: None } => (0..n_layer).collect(),
            _ => Vec::new(),
        })
        .filter(|&l| l < n_layer)
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers
}

fn has_accelerator(a: &Args, backend: &Backend) -> bool {
    let accelerator = |t: DeviceType| !matches!(t, DeviceType::Cpu);
    if a.devices.is_empty() {
        backend
            .devices()
            .iter()
            .any(|d| accelerator(d.device_type()))
    } else {
        a.devices.iter().any(|n| {
            backend
                .device_by_name(n)
                .is_some_and(|d| accelerator(d.device_type()))
        })
    }
}

/// Bytes the overrides keep off the accelerators: tensors of offloaded layers that an
/// override matched and that ended up in host memory, sized from the GGUF tensor table.
fn device_bytes_saved(
    a: &Args,
    backend: &Backend,
    model: &Model,
    placement: &Placement,
    params: &ModelParams,
    path: &Path,
) -> Result<u64, String> {
    let n_gpu_layers = params.n_gpu_layers();
    if !has_accelerator(a, backend) || n_gpu_layers == 0 {
        return Ok(0);
    }
    let n_layer = model.n_layer();
    // llama.cpp offloads the last n_gpu_layers layers.
    let first_offloaded = if n_gpu_layers < 0 {
        0
    } else {
        n_layer.saturating_sub(n_gpu_layers as u32)
    };
    let gguf = GgufFile::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let patterns: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    let mut saved = 0u64;
    for t in gguf.tensors() {
        let Some(layer) = t.layer() else { continue };
        if layer < first_offloaded {
            continue;
        }
        let matched = patterns
            .iter()
            .any(|p| regex_search(p, &t.name) == Some(true));
        let on_host = placement.tensor(&t.name).is_some_and(|p| p.on_host);
        if matched && on_host {
            saved += t.n_bytes;
        }
    }
    Ok(saved)
}

/// Generates (once) and caches the synthetic model named by `--synthetic ARCH:PRESET`.
fn synthetic_model((arch, preset): &(String, String), progress: bool) -> Result<PathBuf, String> {
    let arch: Arch = arch.parse().map_err(|e| format!("--synthetic: {e}"))?;
    let preset: Preset = preset.parse().map_err(|e| format!("--synthetic: {e}"))?;
    if preset == Preset::Full {
        return Err(
            "--synthetic: the full preset is tens of GB; generate it with the \
                    gguf_synth example and pass it with -m"
                .into(),
        );
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!(
        "synthetic-{}-{}-seed1.gguf",
        arch.cli_name(),
        preset.name()
    ));
    eprintln!("synthetic model cache: {}", dir.display());
    if path.exists() {
        return Ok(path);
    }
    eprintln!("generating {} (once; later runs reuse it)", path.display());
    let partial = path.with_extension("gguf.partial");
    let spec = SynthSpec::new(arch, preset).seed(1);
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(spec.file_size().unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template("generating [{bar:40}] {bytes}/{total_bytes}")
                .expect("static template"),
        );
        bar
    });
    spec.write_with_progress(&partial, |p| {
        if let Some(bar) = &bar {
            bar.set_position(p.written);
        }
    })
    .map_err(|e| format!("generating the synthetic model: {e}"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    std::fs::rename(&partial, &path).map_err(|e| format!("saving {}: {e}", path.display()))?;
    Ok(path)
}

/// `LLAMA_CPP_MOE_CACHE`, else the XDG cache directory, else the temp directory.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMA_CPP_MOE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("llama-cpp-moe");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("llama-cpp-moe");
    }
    std::env::temp_dir().join("llama-cpp-moe")
}

/// Our own warnings (e.g. MoE options on a dense model) always reach stderr; with `-v`,
/// llama.cpp's log and every level down to debug do too.
struct StderrLogger {
    verbose: bool,
}

impl StderrLogger {
    fn install(verbose: bool) {
        static QUIET: StderrLogger = StderrLogger { verbose: false };
        static VERBOSE: StderrLogger = StderrLogger { verbose: true };
        let logger = if verbose { &VERBOSE } else { &QUIET };
        if log::set_logger(logger).is_ok() {
            log::set_max_level(if verbose {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Warn
            });
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.verbose || metadata.target().starts_with("llama_cpp_moe")
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }
    fn flush(&self) {}
}
