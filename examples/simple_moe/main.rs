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
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use llama_cpp_moe::context::MemoryBreakdownRow;
use llama_cpp_moe::model::{regex_search, OverrideKind, OverrideTarget, Placement};
use llama_cpp_moe::{
    AddSpecial, Backend, Context, ContextParams, DeviceType, GenerateParams, GenerationStats,
    Model, ModelParams, ParseSpecial, Sampler, SamplerBuilder,
};
use llama_cpp_moe_examples::cli;
use llama_cpp_moe_examples::simple_moe_args::{
    Args, GenerationArgs, ModelArgs, PlacementArgs, SyntheticChoice,
};
use llama_cpp_moe_gguf::synth::{Preset, SynthSpec};
use llama_cpp_moe_gguf::GgufFile;
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
    let mut ctx = new_context(a, &loaded.model)?;
    let generated = generate(a, &loaded, &mut ctx)?;
    let report = Report::collect(a, &backend, &loaded, &ctx, generated)?;
    if a.output.json {
        report.print_json();
    } else {
        report.print_text();
    }
    Ok(())
}

fn backend_with_rpc_servers(placement: &PlacementArgs) -> Result<Backend, String> {
    let backend = Backend::init();
    for endpoint in &placement.rpc {
        backend
            .add_rpc_server(endpoint)
            .map_err(|e| format!("--rpc {endpoint}: {e}"))?;
    }
    Ok(backend)
}

fn print_devices(backend: &Backend) {
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
}

/// The GGUF file to load: `-m`, or the cached synthetic model.
struct ModelFile {
    path: PathBuf,
    synthetic: bool,
}

fn model_file(m: &ModelArgs, progress: bool) -> Result<ModelFile, String> {
    Ok(match &m.path {
        Some(path) => ModelFile {
            path: path.clone(),
            synthetic: false,
        },
        None => ModelFile {
            path: synthetic_model(m.synthetic, progress)?,
            synthetic: true,
        },
    })
}

/// A loaded model with what it was loaded from and with.
struct Loaded {
    model: Model,
    params: ModelParams,
    file: ModelFile,
    load_time: Duration,
}

fn load(
    placement: &PlacementArgs,
    backend: &Backend,
    file: ModelFile,
    progress: bool,
) -> Result<Loaded, String> {
    let params = model_params(placement, backend, progress)?;
    let started = Instant::now();
    let model = Model::load(backend, &file.path, &params)
        .map_err(|e| format!("loading {}: {e}", file.path.display()))?;
    Ok(Loaded {
        model,
        params,
        file,
        load_time: started.elapsed(),
    })
}

fn new_context<'m>(a: &Args, model: &'m Model) -> Result<Context<'m>, String> {
    let g = &a.generation;
    let mut params = ContextParams::default()
        .with_n_ctx(g.ctx_size)
        .with_n_batch(g.batch_size)
        .with_n_ubatch(g.ubatch_size)
        .with_op_offload(!a.placement.no_op_offload)
        .with_flash_attention(g.flash_attn);
    if let Some(t) = g.threads {
        params = params.with_n_threads(t);
    }
    Context::new(model, &params).map_err(|e| format!("creating context: {e}"))
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
    placement: Placement,
    breakdown: Vec<MemoryBreakdownRow>,
    cpu_moe_layers: Vec<u32>,
    device_bytes_saved: u64,
    accelerator: bool,
}

impl<'a> Report<'a> {
    fn collect(
        a: &Args,
        backend: &Backend,
        loaded: &'a Loaded,
        ctx: &Context<'_>,
        generated: Generated,
    ) -> Result<Report<'a>, String> {
        let placement = loaded.model.placement();
        let breakdown = ctx
            .memory_breakdown()
            .map_err(|e| format!("memory breakdown: {e}"))?;
        let accelerator = has_accelerator(&a.placement.devices, backend);
        let device_bytes_saved = if accelerator {
            device_bytes_saved(loaded, &placement)?
        } else {
            0
        };
        Ok(Report {
            cpu_moe_layers: cpu_moe_layers(&loaded.params, loaded.model.n_layer()),
            loaded,
            generated,
            placement,
            breakdown,
            device_bytes_saved,
            accelerator,
        })
    }

    fn print_json(&self) {
        let (loaded, g, model) = (self.loaded, &self.generated, &self.loaded.model);
        let experts = self.placement.experts_on_host();
        let overrides: Vec<_> = loaded
            .params
            .tensor_overrides()
            .map(|o| json!({"pattern": o.pattern(), "buft": target_name(o.target())}))
            .collect();
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
                "cpu_moe_layers": self.cpu_moe_layers,
                "overrides": overrides,
            },
            "placement": self.breakdown.iter().map(|r| json!({
                "buft": r.buffer_type_name(),
                "is_host": r.is_host,
                "model_bytes": r.model_bytes,
                "context_bytes": r.context_bytes,
                "compute_bytes": r.compute_bytes,
            })).collect::<Vec<_>>(),
            "tensors_by_buft": self.placement.totals().iter().map(|(buft, t)| json!({
                "buft": buft, "tensors": t.count, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "experts_on_host": {"tensors": experts.count, "bytes": experts.bytes},
            "device_bytes_saved": self.device_bytes_saved,
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
        let (loaded, g, model) = (self.loaded, &self.generated, &self.loaded.model);
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1} {unit}"));
        eprintln!();
        eprintln!(
            "model      {} ({})",
            loaded.file.path.display(),
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
        eprintln!("load       {:.0} ms", ms(loaded.load_time));
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
        eprintln!(
            "{:<32} {:>12} {:>12} {:>12}",
            "buffer type", "model", "KV/context", "compute"
        );
        for r in &self.breakdown {
            eprintln!(
                "{:<32} {:>12} {:>12} {:>12}",
                r.buffer_type_name(),
                mib(r.model_bytes),
                mib(r.context_bytes),
                mib(r.compute_bytes)
            );
        }
        eprintln!();
        let experts = self.placement.experts_on_host();
        eprintln!(
            "experts on host: {} tensors, {}; device bytes saved vs no offload: {}",
            experts.count,
            mib(experts.bytes),
            mib(self.device_bytes_saved as usize)
        );
        if !self.accelerator {
            eprintln!("(no accelerator in use: everything is in host memory anyway; try --rpc)");
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

fn model_params(
    placement: &PlacementArgs,
    backend: &Backend,
    progress: bool,
) -> Result<ModelParams, String> {
    let mut p = ModelParams::default();
    if let Some(layers) = placement.n_gpu_layers {
        p = p.with_n_gpu_layers(layers.to_n_gpu_layers()?);
    }
    if !placement.devices.is_empty() {
        let mut devices = Vec::new();
        for name in &placement.devices {
            let dev = backend.device_by_name(name).ok_or_else(|| {
                let names: Vec<String> = backend.devices().iter().map(|d| d.name()).collect();
                format!("unknown device {name:?}; available: {}", names.join(", "))
            })?;
            devices.push(dev);
        }
        p = p.with_devices(devices);
    }
    // Same order as llama.cpp: explicit -ot entries first, then the MoE/FFN options.
    for o in &placement.overrides {
        p = p.with_tensor_override(o.pattern.clone(), OverrideTarget::Named(o.buft.clone()));
    }
    if placement.cpu_moe {
        p = p.with_cpu_moe_all();
    }
    if let Some(n) = placement.n_cpu_moe {
        p = p.with_cpu_moe(n);
    }
    if let Some(list) = &placement.cpu_moe_layers {
        p = p.with_cpu_moe_layers(list.layers.iter().copied());
    }
    if let Some(n) = placement.n_cpu_ffn {
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

fn has_accelerator(devices: &[String], backend: &Backend) -> bool {
    let accelerator = |t: DeviceType| !matches!(t, DeviceType::Cpu);
    if devices.is_empty() {
        backend
            .devices()
            .iter()
            .any(|d| accelerator(d.device_type()))
    } else {
        devices.iter().any(|n| {
            backend
                .device_by_name(n)
                .is_some_and(|d| accelerator(d.device_type()))
        })
    }
}

/// Bytes the overrides keep off the accelerators: tensors of offloaded layers that an
/// override matched and that ended up in host memory, sized from the GGUF tensor table.
fn device_bytes_saved(loaded: &Loaded, placement: &Placement) -> Result<u64, String> {
    let Loaded {
        model,
        params,
        file,
        ..
    } = loaded;
    let path = &file.path;
    let n_gpu_layers = params.n_gpu_layers();
    if n_gpu_layers == 0 {
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
fn synthetic_model(choice: SyntheticChoice, progress: bool) -> Result<PathBuf, String> {
    let SyntheticChoice { arch, preset } = choice;
    // The argument parser refuses the full preset (tens of GB); this keeps it that way.
    debug_assert_ne!(preset, Preset::Full);
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!(
        "synthetic-{}-{}-seed1-r{}.gguf",
        arch.cli_name(),
        preset.name(),
        llama_cpp_moe_gguf::synth::FACTORY_REVISION
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
