//! Loading a model the way `simple_moe` and `moe_server` do from the shared flags
//! ([`crate::args`]): RPC servers, the model file (or the cached synthetic
//! one), model and context parameters, and the placement report printed after loading.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use llama_cpp_moe::context::MemoryBreakdownRow;
use llama_cpp_moe::model::{regex_search, OverrideKind, OverrideReport, OverrideTarget, Placement};
use llama_cpp_moe::{Backend, Context, ContextParams, DeviceType, ErrorChain, Model, ModelParams};
use llama_cpp_moe_gguf::synth::{Preset, SynthSpec};
use llama_cpp_moe_gguf::GgufFile;

use crate::args::{ContextArgs, ModelArgs, PlacementArgs, SyntheticChoice};

/// The llama.cpp backend with the `--rpc` servers added as devices.
pub fn backend_with_rpc_servers(placement: &PlacementArgs) -> Result<Backend, String> {
    let backend = Backend::init();
    for endpoint in &placement.rpc {
        backend
            .add_rpc_server(endpoint)
            .map_err(|e| format!("--rpc: {}", ErrorChain(&e)))?;
    }
    Ok(backend)
}

/// `--list-devices`: every device with its type and memory, on stdout.
pub fn print_devices(backend: &Backend) {
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
    // A backend compiled in but without devices (CUDA on a machine without an NVIDIA GPU
    // or driver) is not an error: say so and carry on with the CPU. RPC has no devices
    // until --rpc adds servers.
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
}

/// The GGUF file to load: `-m`, or the cached synthetic model.
pub struct ModelFile {
    /// The file.
    pub path: PathBuf,
    /// Whether it is the cached synthetic model (random weights) rather than `-m`.
    pub synthetic: bool,
}

/// The file `-m` names, or the synthetic model of `--synthetic`, generated once into
/// [`cache_dir`] (with a progress bar when `progress`).
pub fn model_file(m: &ModelArgs, progress: bool) -> Result<ModelFile, String> {
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
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// The parameters it was loaded with.
    pub params: ModelParams,
    /// The file it was loaded from.
    pub file: ModelFile,
    /// How long loading took.
    pub load_time: Duration,
}

/// Loads `file` with the placement flags (see [`model_params`]).
pub fn load(
    placement: &PlacementArgs,
    backend: &Backend,
    file: ModelFile,
    progress: bool,
) -> Result<Loaded, String> {
    load_with(model_params(placement, backend, progress)?, backend, file)
}

/// Loads `file` with `params` as they are (e.g. a plan's).
pub fn load_with(
    params: ModelParams,
    backend: &Backend,
    file: ModelFile,
) -> Result<Loaded, String> {
    let started = Instant::now();
    let model = Model::load(backend, &file.path, &params)
        .map_err(|e| format!("loading the model: {}", ErrorChain(&e)))?;
    Ok(Loaded {
        model,
        params,
        file,
        load_time: started.elapsed(),
    })
}

/// A context with the `-c`/`-b`/`-ub`/`-t`/`-fa` flags and room for `n_seq_max`
/// sequences decoded together.
pub fn new_context<'m>(
    g: &ContextArgs,
    placement: &PlacementArgs,
    n_seq_max: u32,
    model: &'m Model,
) -> Result<Context<'m>, String> {
    let params = context_params(g, placement, n_seq_max);
    Context::new(model, &params).map_err(|e| format!("creating context: {e}"))
}

/// The context parameters `new_context` uses.
pub fn context_params(g: &ContextArgs, placement: &PlacementArgs, n_seq_max: u32) -> ContextParams {
    let mut params = ContextParams::default()
        .with_n_ctx(g.ctx_size)
        .with_n_batch(g.batch_size)
        .with_n_ubatch(g.ubatch_size)
        .with_n_seq_max(n_seq_max)
        .with_op_offload(!placement.no_op_offload)
        .with_flash_attention(g.flash_attn);
    if let Some(t) = g.threads {
        params = params.with_n_threads(t);
    }
    params
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `bytes` in MiB, for reports: `12.34 MiB`.
pub fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The model parameters of the placement flags (`-ngl`, `-dev`, `-ot`, the MoE and FFN
/// options, in llama.cpp's order), checked against `backend`; with a progress bar when
/// `progress`.
pub fn model_params(
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
pub fn cpu_moe_layers(params: &ModelParams, n_layer: u32) -> Vec<u32> {
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

/// Whether the devices `-dev` names (or, without `-dev`, the backend's) include one that
/// is not the CPU.
pub fn has_accelerator(devices: &[String], backend: &Backend) -> bool {
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
pub fn device_bytes_saved(loaded: &Loaded, placement: &Placement) -> Result<u64, String> {
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
    let gguf = GgufFile::open(path).map_err(|e| ErrorChain(&e).to_string())?;
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
pub fn synthetic_model(choice: SyntheticChoice, progress: bool) -> Result<PathBuf, String> {
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
    .map_err(|e| format!("generating the synthetic model: {}", ErrorChain(&e)))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    std::fs::rename(&partial, &path).map_err(|e| format!("saving {}: {e}", path.display()))?;
    Ok(path)
}

/// `LLAMA_CPP_MOE_CACHE`, else the XDG cache directory, else the temp directory.
pub fn cache_dir() -> PathBuf {
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

/// Where the loaded model's tensors went: the report `simple_moe` and `moe_server` print
/// after loading.
pub struct PlacementReport {
    /// Where each tensor went.
    pub placement: Placement,
    /// Model, context and compute bytes per buffer type.
    pub breakdown: Vec<MemoryBreakdownRow>,
    /// The layers whose routed experts stay in host memory.
    pub cpu_moe_layers: Vec<u32>,
    /// See [`device_bytes_saved`].
    pub device_bytes_saved: u64,
    /// See [`has_accelerator`].
    pub accelerator: bool,
    /// What each override matched (first match wins, as in the loader).
    pub overrides: OverrideReport,
}

impl PlacementReport {
    /// Collects the report of `loaded` and its context `ctx`.
    pub fn collect(
        placement_args: &PlacementArgs,
        backend: &Backend,
        loaded: &Loaded,
        ctx: &Context<'_>,
    ) -> Result<PlacementReport, String> {
        let placement = loaded.model.placement();
        let breakdown = ctx
            .memory_breakdown()
            .map_err(|e| format!("memory breakdown: {e}"))?;
        let accelerator = has_accelerator(&placement_args.devices, backend);
        let device_bytes_saved = if accelerator {
            device_bytes_saved(loaded, &placement)?
        } else {
            0
        };
        Ok(PlacementReport {
            cpu_moe_layers: cpu_moe_layers(&loaded.params, loaded.model.n_layer()),
            placement,
            breakdown,
            device_bytes_saved,
            accelerator,
            overrides: loaded.model.override_report().clone(),
        })
    }

    /// The model's path, description, shape and load time, on stderr.
    pub fn print_model(&self, loaded: &Loaded) {
        let model = &loaded.model;
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
    }

    /// The per-buffer-type table and the experts-on-host line, on stderr.
    pub fn print_placement(&self) {
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
        if !self.accelerator {
            eprintln!("(no accelerator in use: everything is in host memory anyway; try --rpc)");
        }
    }

    /// Each `-ot` pattern with what it matched; the builder-made MoE/FFN patterns (one
    /// per layer) as one line.
    fn print_overrides(&self) {
        let mut builder = (0usize, 0usize, 0usize);
        for o in &self.overrides.overrides {
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

    /// One JSON entry per override, with what it matched: a pattern with
    /// `"tensors": 0` moved nothing.
    pub fn overrides_json(&self) -> Vec<serde_json::Value> {
        self.overrides
            .overrides
            .iter()
            .map(|o| {
                serde_json::json!({
                    "pattern": o.pattern,
                    "buft": o.target,
                    "explicit": o.kind == OverrideKind::Explicit,
                    "tensors": o.tensors.len(),
                    "bytes": o.bytes,
                    "landed_in": o.buffer_types.iter().map(|(buft, t)| serde_json::json!({
                        "buft": buft, "tensors": t.count, "bytes": t.bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}
