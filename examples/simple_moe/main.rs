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
use llama_cpp_moe::model::{
    bytes_by_location, regex_search, MemoryLocation, OverrideKind, OverrideTarget, Placement,
};
use llama_cpp_moe::plan::{Bandwidths, Budget, LayerOrder, Plan, Planner};
use llama_cpp_moe::{
    AddSpecial, Backend, Context, ContextParams, DeviceType, GenerateParams, GenerationStats,
    Model, ModelParams, ParseSpecial, Sampler, SamplerBuilder,
};
use llama_cpp_moe_examples::cli;
use llama_cpp_moe_examples::simple_moe_args::{
    Args, FitArgs, FitOrder, GenerationArgs, ModelArgs, PlacementArgs, SyntheticChoice,
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
    let plan = if a.placement.fit.wanted() {
        let plan = make_plan(a, &backend, &file)?;
        if a.placement.fit.plan {
            if a.output.json {
                println!("{}", plan_json(&plan));
            } else {
                print_plan(&plan);
            }
            return Ok(());
        }
        Some(plan)
    } else {
        None
    };
    // With a plan: its params (the caller's plus the planned overrides), no progress bar.
    let loaded = load(&a.placement, &backend, file, interactive, plan.as_ref())?;
    let mut ctx = new_context(a, &loaded.model, plan.as_ref().map(|p| p.n_ctx))?;
    let generated = generate(a, &loaded, &mut ctx)?;
    let mut report = Report::collect(a, &backend, &loaded, &ctx, generated)?;
    report.plan = plan.as_ref();
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
    plan: Option<&Plan>,
) -> Result<Loaded, String> {
    let params = match plan {
        Some(plan) => plan.params.clone(),
        None => model_params(placement, backend, progress)?,
    };
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

fn new_context<'m>(a: &Args, model: &'m Model, n_ctx: Option<u32>) -> Result<Context<'m>, String> {
    let mut params = context_params(a);
    if let Some(n) = n_ctx {
        params = params.with_n_ctx(n);
    }
    Context::new(model, &params).map_err(|e| format!("creating context: {e}"))
}

fn context_params(a: &Args) -> ContextParams {
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
    params
}

/// Plans the placement (`--fit`, `--plan`): budgets from `--fit-budget`, else free
/// memory minus `--fit-target` (1024 MiB by default, llama.cpp's `--fit` default).
fn make_plan(a: &Args, backend: &Backend, file: &ModelFile) -> Result<Plan, String> {
    let fit: &FitArgs = &a.placement.fit;
    let params = model_params(&a.placement, backend, false)?;
    let devices: Vec<_> = if params.devices().is_empty() {
        backend
            .devices()
            .into_iter()
            .filter(|d| d.device_type() != DeviceType::Cpu)
            .collect()
    } else {
        params.devices().to_vec()
    };
    if devices.is_empty() {
        return Err("--fit/--plan: no device to plan for (only the CPU; try --rpc)".into());
    }
    let list_for = |flag: &str, values: &[u64]| -> Result<Vec<u64>, String> {
        match values.len() {
            0 => Ok(Vec::new()),
            1 => Ok(vec![values[0]; devices.len()]),
            n if n == devices.len() => Ok(values.to_vec()),
            n => Err(format!(
                "{flag}: {n} values for {} devices ({})",
                devices.len(),
                devices
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    };
    let budgets: Vec<Budget> = if !fit.fit_budget.is_empty() {
        list_for("--fit-budget", &fit.fit_budget)?
            .into_iter()
            .map(|m| Budget::Bytes((m as usize) << 20))
            .collect()
    } else {
        let targets = list_for("--fit-target", &fit.fit_target)?;
        (0..devices.len())
            .map(|i| Budget::FreeMinus((targets.get(i).copied().unwrap_or(1024) as usize) << 20))
            .collect()
    };
    let order = match &fit.fit_order {
        FitOrder::Last => LayerOrder::LastFirst,
        FitOrder::First => LayerOrder::FirstFirst,
        FitOrder::Layers(l) => LayerOrder::Explicit(l.clone()),
    };
    let ctx = context_params(a);
    let n_ctx_min = fit.fit_ctx.unwrap_or(a.generation.ctx_size);
    let mut planner = Planner::new(backend, &file.path)
        .with_params(params)
        .with_context(ctx, n_ctx_min)
        .with_order(order)
        .with_bandwidths(Bandwidths::new(fit.host_bw * 1e9, fit.device_bw * 1e9));
    for (dev, budget) in devices.iter().zip(budgets) {
        planner = planner.with_budget(*dev, budget);
    }
    planner.plan().map_err(|e| e.to_string())
}

fn plan_json(plan: &Plan) -> serde_json::Value {
    let r = &plan.report;
    json!({
        "n_layer": r.n_layer,
        "n_ctx": plan.n_ctx,
        "n_ctx_wish": r.n_ctx_wish,
        "n_ctx_min": r.n_ctx_min,
        "order": format!("{:?}", r.order),
        "devices": r.devices.iter().map(|d| json!({
            "name": d.name,
            "budget_bytes": d.budget,
            "unplanned_bytes": d.unplanned.total(),
            "predicted": {
                "model_bytes": d.predicted.model,
                "context_bytes": d.predicted.context,
                "compute_bytes": d.predicted.compute,
                "total_bytes": d.predicted.total(),
            },
            "bytes_per_token": d.bytes_per_token,
        })).collect::<Vec<_>>(),
        "host": {
            "model_bytes": r.host.model,
            "context_bytes": r.host.context,
            "compute_bytes": r.host.compute,
            "total_bytes": r.host.total(),
        },
        "expert_layers_on_host": r.expert_layers_on_host,
        "split_layers": r.split_layers.iter().map(|(l, t)| json!({"layer": l, "tensors": t})).collect::<Vec<_>>(),
        "dense_ffn_layers_on_host": r.dense_ffn_layers_on_host,
        "moved": {
            "tensors": r.moved.len(),
            "bytes": r.moved.iter().map(|t| t.bytes).sum::<usize>(),
        },
        "patterns": r.patterns,
        "decode": {
            "host_bytes_per_token": r.decode.host_bytes_per_token,
            "device_bytes_per_token": r.decode.device_bytes_per_token,
            "host_bandwidth": r.decode.bandwidths.host,
            "device_bandwidth": r.decode.bandwidths.device,
            "seconds_per_token": r.decode.seconds_per_token,
            "tokens_per_second": r.decode.tokens_per_second(),
        },
        "dry_runs": r.dry_runs,
        "search_ms": r.search_seconds * 1e3,
        "total_ms": r.total_seconds * 1e3,
    })
}

fn print_plan(plan: &Plan) {
    let r = &plan.report;
    eprintln!(
        "plan       n_ctx {} (wished {}, minimum {}), {} dry runs, search {:.2} ms, total {:.0} ms",
        plan.n_ctx,
        r.n_ctx_wish,
        r.n_ctx_min,
        r.dry_runs,
        r.search_seconds * 1e3,
        r.total_seconds * 1e3
    );
    for d in &r.devices {
        eprintln!(
            "           {:<28} budget {:>12}  unplanned {:>12}  predicted {:>12}",
            d.name,
            d.budget.map_or("none".to_owned(), mib),
            mib(d.unplanned.total()),
            mib(d.predicted.total())
        );
    }
    eprintln!("           host RAM predicted {}", mib(r.host.total()));
    eprintln!(
        "           experts in host RAM: layers {:?}; split {:?}; dense FFN {:?}",
        r.expert_layers_on_host, r.split_layers, r.dense_ffn_layers_on_host
    );
    for p in &r.patterns {
        eprintln!("           -ot '{p}=CPU'");
    }
    eprintln!(
        "           decode bound {:.1} tok/s ({} host + {} device per token at {:.0} / {:.0} GB/s)",
        r.decode.tokens_per_second(),
        mib(r.decode.host_bytes_per_token as usize),
        mib(r.decode.device_bytes_per_token as usize),
        r.decode.bandwidths.host / 1e9,
        r.decode.bandwidths.device / 1e9
    );
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
    plan: Option<&'a Plan>,
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
            plan: None,
        })
    }

    /// Per planned device: (name, predicted, measured) total bytes.
    fn plan_vs_measured(&self) -> Vec<(String, usize, usize)> {
        let Some(plan) = self.plan else {
            return Vec::new();
        };
        let measured = bytes_by_location(&self.breakdown);
        plan.report
            .devices
            .iter()
            .map(|d| {
                let real = measured
                    .iter()
                    .find(|(l, _)| *l == MemoryLocation::Device(d.device))
                    .map_or(0, |(_, b)| b.total());
                (d.name.clone(), d.predicted.total(), real)
            })
            .collect()
    }

    fn print_json(&self) {
        let (loaded, g, model) = (self.loaded, &self.generated, &self.loaded.model);
        let experts = self.placement.experts_on_host();
        // One entry per override, with what it matched (first match wins, as in the
        // loader): a pattern with `"tensors": 0` moved nothing.
        let overrides: Vec<_> = model
            .override_report()
            .overrides
            .iter()
            .map(|o| {
                json!({
                    "pattern": o.pattern,
                    "buft": o.target,
                    "explicit": o.kind == OverrideKind::Explicit,
                    "tensors": o.tensors.len(),
                    "bytes": o.bytes,
                    "landed_in": o.buffer_types.iter().map(|(buft, t)| json!({
                        "buft": buft, "tensors": t.count, "bytes": t.bytes,
                    })).collect::<Vec<_>>(),
                })
            })
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
        let mut out = out;
        if let Some(plan) = self.plan {
            let mut p = plan_json(plan);
            p["measured"] = self
                .plan_vs_measured()
                .into_iter()
                .map(|(name, predicted, measured)| {
                    json!({"name": name, "predicted_bytes": predicted, "measured_bytes": measured})
                })
                .collect::<Vec<_>>()
                .into();
            out["plan"] = p;
        }
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
        self.print_overrides();
        if let Some(plan) = self.plan {
            print_plan(plan);
            for (name, predicted, measured) in self.plan_vs_measured() {
                eprintln!(
                    "           {name}: predicted {} measured {}",
                    mib(predicted),
                    mib(measured)
                );
            }
        }
        if !self.accelerator {
            eprintln!("(no accelerator in use: everything is in host memory anyway; try --rpc)");
        }
    }
}

impl Report<'_> {
    /// Each `-ot` pattern with what it matched; the builder-made MoE/FFN patterns (one
    /// per layer) as one line.
    fn print_overrides(&self) {
        let report = self.loaded.model.override_report();
        let mut builder = (0usize, 0usize, 0usize);
        for o in &report.overrides {
            if o.kind != OverrideKind::Explicit {
                builder.0 += 1;
                builder.1 += o.tensors.len();
                builder.2 += o.bytes;
                continue;
            }
            let landed: Vec<String> = o.buffer_types.keys().cloned().collect();
            eprintln!(
                "override {:?} -> {}: {} tensors, {}{}",
                o.pattern,
                o.target,
                o.tensors.len(),
                mib(o.bytes),
                if o.is_unused() {
                    " (matched nothing)".to_owned()
                } else {
                    format!(" in {}", landed.join(", "))
                }
            );
        }
        if builder.0 > 0 {
            eprintln!(
                "MoE/FFN options: {} patterns, {} tensors, {}",
                builder.0,
                builder.1,
                mib(builder.2)
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
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
