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
use std::path::Path;
use std::process::ExitCode;

use llama_cpp_moe::model::{bytes_by_location, MemoryLocation};
use llama_cpp_moe::plan::{Bandwidths, Budget, LayerOrder, Plan, Planner};
use llama_cpp_moe::routing::RoutingStats;
use llama_cpp_moe::{
    AddSpecial, Backend, Context, ErrorChain, GenerateParams, GenerationStats, Model, ParseSpecial,
    Sampler, SamplerBuilder,
};
use llama_cpp_moe_cli as cli;
use llama_cpp_moe_cli::args::{Args, FitArgs, FitOrder, GenerationArgs};
use llama_cpp_moe_cli::model_setup::{
    backend_with_rpc_servers, context_params, load, load_with, mib, model_file, model_params, ms,
    new_context, print_devices, Loaded, ModelFile, PlacementReport,
};
use serde_json::json;

fn main() -> ExitCode {
    let args = Args::from_env();
    cli::init_logging(args.output.verbose);
    if !args.output.verbose {
        llama_cpp_moe::logging::set_silent(true);
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
    let (loaded, mut ctx);
    if let Some(plan) = &plan {
        // The plan's params (the caller's plus the planned overrides) and context length.
        loaded = load_with(plan.params.clone(), &backend, file)?;
        let params = context_params(&a.generation.context, &a.placement, 1)
            .with_n_ctx(plan.n_ctx)
            .with_routing_stats(a.output.moe_stats.is_some());
        ctx = Context::new(&loaded.model, &params)
            .map_err(|e| format!("creating context: {}", ErrorChain(&e)))?;
    } else {
        loaded = load(&a.placement, &backend, file, interactive)?;
        ctx = if a.output.moe_stats.is_some() {
            let params =
                context_params(&a.generation.context, &a.placement, 1).with_routing_stats(true);
            Context::new(&loaded.model, &params)
                .map_err(|e| format!("creating context: {}", ErrorChain(&e)))?
        } else {
            new_context(&a.generation.context, &a.placement, 1, &loaded.model)?
        };
    }
    let generated = generate(a, &loaded, &mut ctx)?;
    if let Some(path) = &a.output.moe_stats {
        let summary = save_routing_stats(path, &loaded, &ctx)?;
        // stdout holds exactly one JSON object with --json.
        if a.output.json {
            eprint!("{summary}");
        } else {
            print!("{summary}");
        }
    }
    let mut report = Report::collect(a, &backend, &loaded, &ctx, generated)?;
    report.plan = plan.as_ref();
    if a.output.json {
        report.print_json();
    } else {
        report.print_text();
    }
    Ok(())
}

/// `--moe-stats FILE`: this run's routing statistics, added to the profile already in
/// FILE (of the same model) or written as a new one; returns the summary to print.
fn save_routing_stats(path: &Path, loaded: &Loaded, ctx: &Context<'_>) -> Result<String, String> {
    let mut stats = ctx
        .routing_stats()
        .ok_or("routing statistics were not collected")?;
    stats.model = stats.model.with_file_name(&loaded.file.path);
    stats.prompts = 1;
    let what = if path.exists() {
        let mut profile = RoutingStats::load(path)
            .and_then(|mut p| p.merge(&stats).map(|()| p))
            .map_err(|e| format!("--moe-stats: {}", ErrorChain(&e)))?;
        std::mem::swap(&mut profile, &mut stats);
        "added to"
    } else {
        "written to"
    };
    stats
        .save(path)
        .map_err(|e| format!("--moe-stats: {}", ErrorChain(&e)))?;
    Ok(format!(
        "{}routing profile {what} {}\n",
        stats.summary(4),
        path.display()
    ))
}

/// Plans the placement (`--fit`, `--plan`): budgets from `--fit-budget`, else free
/// memory minus `--fit-target` (1024 MiB by default, llama.cpp's `--fit` default).
fn make_plan(a: &Args, backend: &Backend, file: &ModelFile) -> Result<Plan, String> {
    let fit: &FitArgs = &a.placement.fit;
    let params = model_params(&a.placement, backend, false)?;
    let planner = Planner::new(backend, &file.path).with_params(params);
    // llama.cpp's own list for these params (RPC servers first, only the main GPU with
    // -sm none), the one the budgets apply to.
    let devices = planner.devices().map_err(|e| e.to_string())?;
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
    let ctx = context_params(&a.generation.context, &a.placement, 1);
    let n_ctx_min = fit.fit_ctx.unwrap_or(a.generation.context.ctx_size);
    planner
        .with_context(ctx, n_ctx_min)
        .with_order(order)
        .with_bandwidths(Bandwidths::new(fit.host_bw * 1e9, fit.device_bw * 1e9))
        .with_budgets(budgets)
        .plan()
        .map_err(|e| ErrorChain(&e).to_string())
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
            .map_err(|e| format!("sampler: {}", ErrorChain(&e)));
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
        .map_err(|e| format!("sampler: {}", ErrorChain(&e)))
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
        .map_err(|e| format!("tokenizing the prompt: {}", ErrorChain(&e)))?;
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
        let item = item.map_err(|e| format!("generation: {}", ErrorChain(&e)))?;
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
        Ok(Report {
            loaded,
            generated,
            placement: PlacementReport::collect(&a.placement, backend, loaded, ctx)?,
            plan: None,
        })
    }

    /// Per planned device: (name, predicted, measured) total bytes.
    fn plan_vs_measured(&self) -> Vec<(String, usize, usize)> {
        let Some(plan) = self.plan else {
            return Vec::new();
        };
        let measured = bytes_by_location(&self.placement.breakdown);
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
    }
}
