//! The flags of a program that loads a (MoE) model, spelled as llama.cpp spells them
//! (`-m`, `-ngl`, `-ub`, `-ot`, `--n-cpu-moe`, ...; the multi-letter ones through
//! [`crate::parse`]), in groups a program flattens into its own clap command:
//! [`ModelArgs`], [`ContextArgs`], [`PlacementArgs`] (with the planner's [`FitArgs`]),
//! [`GenerationArgs`] and [`OutputArgs`]. [`Args`] is all of them: `simple_moe`'s command.

use std::path::PathBuf;

use clap::Parser;
use llama_cpp_moe::context::FlashAttention;
use llama_cpp_moe_gguf::synth::{Arch, Preset};

use crate::{GpuLayers, LayerList, Spellings};

/// llama.cpp's single-dash multi-letter spellings of `simple_moe`'s flags.
pub const LLAMA_SPELLINGS: Spellings = &[
    ("-ngl", "--n-gpu-layers"),
    ("-ub", "--ubatch-size"),
    ("-fa", "--flash-attn"),
    ("-cmoe", "--cpu-moe"),
    ("-ncmoe", "--n-cpu-moe"),
    ("-ot", "--override-tensor"),
    ("-dev", "--device"),
    ("-fitt", "--fit-target"),
    ("-fitc", "--fit-ctx"),
];

/// One `-ot PATTERN=BUFT` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideArg {
    /// The regular expression tensor names are searched with.
    pub pattern: String,
    /// The buffer type matching tensors go to (`CPU`, `CUDA0`, `RPC0`, ...).
    pub buft: String,
}

/// The synthetic model `--synthetic ARCH:PRESET` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticChoice {
    /// The architecture.
    pub arch: Arch,
    /// The size.
    pub preset: Preset,
}

/// Run a (MoE) GGUF model with llama.cpp's flags, and show where its tensors went and
/// what that cost. Without -m it generates a synthetic MoE model once into a cache
/// directory ($LLAMA_CPP_MOE_CACHE, else ~/.cache/llama-cpp-moe).
#[derive(Debug, Clone, Parser)]
#[command(name = "simple_moe")]
pub struct Args {
    /// Which model.
    #[command(flatten, next_help_heading = "Model")]
    pub model: ModelArgs,
    /// The context, the sampler and how much to generate.
    #[command(flatten, next_help_heading = "Generation")]
    pub generation: GenerationArgs,
    /// Where the tensors go.
    #[command(flatten, next_help_heading = "Placement")]
    pub placement: PlacementArgs,
    /// What is printed.
    #[command(flatten, next_help_heading = "Output")]
    pub output: OutputArgs,
}

/// Which model to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// GGUF model (default: a synthetic MoE model, see --synthetic)
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// Synthetic model to generate and cache when no -m is given (archs: qwen3moe
    /// gpt-oss phimoe deepseek mixtral llama; presets: tiny small)
    #[arg(long, value_name = "ARCH:PRESET", default_value = "qwen3moe:small")]
    #[arg(value_parser = parse_synthetic)]
    pub synthetic: SyntheticChoice,
}

/// The context, the sampler and how much to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerationArgs {
    /// Prompt
    #[arg(short = 'p', long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Tokens to generate
    #[arg(short = 'n', long, value_name = "N", default_value_t = 64)]
    pub n_predict: u32,
    /// The context's size, batches and threads.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Sampling seed
    #[arg(short = 's', long, value_name = "N", default_value_t = 42)]
    pub seed: u32,
    /// Temperature; 0 = greedy
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temp: f32,
    /// Top-k sampling
    #[arg(long, value_name = "N")]
    pub top_k: Option<i32>,
    /// Top-p (nucleus) sampling
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Min-p sampling
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
}

/// The context's size, batches and threads: shared by `simple_moe` and `moe_server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ContextArgs {
    /// Context size
    #[arg(short = 'c', long, value_name = "N", default_value_t = 2048)]
    pub ctx_size: u32,
    /// CPU threads (default: llama.cpp's choice)
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<i32>,
    /// Logical batch size
    #[arg(short = 'b', long, value_name = "N", default_value_t = 2048)]
    pub batch_size: u32,
    /// Physical batch size (-ub)
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub ubatch_size: u32,
    /// Flash attention (-fa): on, off or auto
    #[arg(long, value_name = "on|off|auto", default_value = "auto")]
    #[arg(value_parser = parse_flash_attn)]
    pub flash_attn: FlashAttention,
}

/// Where the model's tensors and computations go.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// Layers on accelerators (-ngl): a count or `all` (default: llama.cpp's)
    #[arg(long, alias = "gpu-layers", value_name = "N|all")]
    pub n_gpu_layers: Option<GpuLayers>,
    /// Keep every routed expert in host memory (-cmoe)
    #[arg(long)]
    pub cpu_moe: bool,
    /// ... only those of the first N layers (-ncmoe)
    #[arg(long, value_name = "N")]
    pub n_cpu_moe: Option<u32>,
    /// ... those of these layers, e.g. 36-47 or 0,2,4-6
    #[arg(long, value_name = "LIST")]
    pub cpu_moe_layers: Option<LayerList>,
    /// Keep the dense FFN of the first N layers in host memory
    #[arg(long, value_name = "N")]
    pub n_cpu_ffn: Option<u32>,
    /// Tensor overrides (-ot), repeatable
    #[arg(
        long = "override-tensor",
        value_name = "PATTERN=BUFT[,...]",
        value_delimiter = ','
    )]
    #[arg(value_parser = parse_override)]
    pub overrides: Vec<OverrideArg>,
    /// Use ggml RPC servers as devices
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Devices to use (-dev; see --list-devices)
    #[arg(long = "device", value_name = "NAME[,...]", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Print the devices and exit
    #[arg(long)]
    pub list_devices: bool,
    /// Do not offload host-tensor ops to accelerators
    #[arg(long)]
    pub no_op_offload: bool,
    /// The memory planner.
    #[command(flatten)]
    pub fit: FitArgs,
}

/// The memory planner: what stays in host RAM so that each device fits its budget.
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    /// Plan the placement against each device's budget (default: its reported free
    /// memory minus --fit-target), then load with the plan. Keeps -ngl, -dev and -ot.
    #[arg(long)]
    pub fit: bool,
    /// Print the plan and exit without reading a weight (with --json: one object)
    #[arg(long)]
    pub plan: bool,
    /// MiB to leave free on each device, in device order (-fitt; one value: every
    /// device) [default: 1024]
    #[arg(long, value_name = "MiB[,MiB...]", value_delimiter = ',')]
    pub fit_target: Vec<u64>,
    /// The most each device may hold, in MiB, in device order (instead of free memory)
    #[arg(long, value_name = "MiB[,MiB...]", value_delimiter = ',')]
    pub fit_budget: Vec<u64>,
    /// Smallest context the plan may shrink to (-fitc) [default: -c, no shrinking]
    #[arg(long, value_name = "N")]
    pub fit_ctx: Option<u32>,
    /// Which layers give their experts to host RAM first: last, first, or a list in
    /// order of preference (e.g. 40-47,0-3)
    #[arg(long, value_name = "last|first|LIST", default_value = "last")]
    #[arg(value_parser = parse_fit_order)]
    pub fit_order: FitOrder,
    /// Host RAM bandwidth for the plan's decode bound, GB/s
    #[arg(long, value_name = "GB/s", default_value_t = 80.0)]
    pub host_bw: f64,
    /// Device memory bandwidth for the plan's decode bound, GB/s
    #[arg(long, value_name = "GB/s", default_value_t = 1000.0)]
    pub device_bw: f64,
}

impl FitArgs {
    /// Whether any planner flag asks for a plan.
    pub fn wanted(&self) -> bool {
        self.fit || self.plan || !self.fit_target.is_empty() || !self.fit_budget.is_empty()
    }
}

/// `--fit-order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitOrder {
    /// The last layers first.
    Last,
    /// The first layers first.
    First,
    /// These layers, in this order.
    Layers(Vec<u32>),
}

/// What is printed, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Print the text at the end instead of streaming it
    #[arg(long)]
    pub no_stream: bool,
    /// Print exactly one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// Show llama.cpp's log
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Collect expert routing statistics, write them to FILE as a JSON profile (added
    /// to the profile already there, of the same model) and print a summary
    #[arg(long, value_name = "FILE")]
    pub moe_stats: Option<std::path::PathBuf>,
}

const DEFAULT_PROMPT: &str = "Once upon a time, in a valley full of clockwork birds,";

impl Args {
    /// Parses this process's command line; exits on `--help` or a bad one.
    pub fn from_env() -> Args {
        crate::parse(LLAMA_SPELLINGS)
    }
}

fn parse_synthetic(s: &str) -> Result<SyntheticChoice, String> {
    let (arch, preset) = s
        .split_once(':')
        .ok_or_else(|| format!("expected ARCH:PRESET, got {s:?}"))?;
    let arch: Arch = arch.parse().map_err(|e| format!("{e}"))?;
    let preset: Preset = preset.parse().map_err(|e| format!("{e}"))?;
    if preset == Preset::Full {
        return Err(
            "the full preset is tens of GB; generate it with the gguf_synth \
                    example and pass it with -m"
                .into(),
        );
    }
    Ok(SyntheticChoice { arch, preset })
}

fn parse_fit_order(s: &str) -> Result<FitOrder, String> {
    match s {
        "last" => Ok(FitOrder::Last),
        "first" => Ok(FitOrder::First),
        list => {
            // Unlike --cpu-moe-layers, the order given is kept.
            let mut layers = Vec::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let parsed: LayerList = part.parse()?;
                layers.extend(parsed.layers);
            }
            if layers.is_empty() {
                return Err(format!("expected last, first or a layer list, got {s:?}"));
            }
            Ok(FitOrder::Layers(layers))
        }
    }
}

fn parse_flash_attn(s: &str) -> Result<FlashAttention, String> {
    match s {
        "on" | "1" | "true" => Ok(FlashAttention::Enabled),
        "off" | "0" | "false" => Ok(FlashAttention::Disabled),
        "auto" => Ok(FlashAttention::Auto),
        _ => Err(format!("expected on, off or auto, got {s:?}")),
    }
}

fn parse_override(item: &str) -> Result<OverrideArg, String> {
    match item.split_once('=') {
        Some((pattern, buft)) if !pattern.is_empty() && !buft.is_empty() => Ok(OverrideArg {
            pattern: pattern.to_owned(),
            buft: buft.to_owned(),
        }),
        _ => Err(format!(
            "invalid override {item:?}: expected PATTERN=BUFFER_TYPE"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, clap::Error> {
        crate::try_parse_from(
            std::iter::once("simple_moe").chain(line.split_whitespace()),
            LLAMA_SPELLINGS,
        )
    }

    #[test]
    fn the_command_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn llama_cpp_spellings() {
        let a = args("-m x.gguf -ngl all -ub 128 -ot a=CPU,b=RPC0 -ot c=CPU --n-cpu-moe 3 -fa on")
            .unwrap();
        assert_eq!(a.model.path, Some(PathBuf::from("x.gguf")));
        assert_eq!(a.placement.n_gpu_layers, Some(GpuLayers::All));
        assert_eq!(a.generation.context.ubatch_size, 128);
        assert_eq!(a.placement.overrides.len(), 3);
        assert_eq!(a.placement.overrides[1].buft, "RPC0");
        assert_eq!(a.placement.n_cpu_moe, Some(3));
        assert_eq!(a.generation.context.flash_attn, FlashAttention::Enabled);
        let b = args("-cmoe -ncmoe 2 -dev A,B --rpc h:1 -c 256 -t 2 -n 8 --cpu-moe-layers 2-3")
            .unwrap();
        assert_eq!(b.placement.cpu_moe_layers.unwrap().layers, [2, 3]);
        assert!(b.placement.cpu_moe);
        assert_eq!(b.placement.n_cpu_moe, Some(2));
        assert_eq!(b.placement.devices, ["A", "B"]);
        assert_eq!(b.placement.rpc, ["h:1"]);
        assert_eq!(
            (
                b.generation.context.ctx_size,
                b.generation.context.threads,
                b.generation.n_predict
            ),
            (256, Some(2), 8)
        );
    }

    #[test]
    fn fit_flags() {
        let a =
            args("--fit -fitt 512,256 --fit-budget 100 -fitc 4096 --fit-order 40-47,0").unwrap();
        let f = &a.placement.fit;
        assert!(f.fit && f.wanted() && !f.plan);
        assert_eq!(f.fit_target, [512, 256]);
        assert_eq!(f.fit_budget, [100]);
        assert_eq!(f.fit_ctx, Some(4096));
        assert_eq!(
            f.fit_order,
            FitOrder::Layers(vec![40, 41, 42, 43, 44, 45, 46, 47, 0])
        );
        let b = args("--plan --json").unwrap();
        assert!(b.placement.fit.plan && b.placement.fit.wanted());
        assert_eq!(b.placement.fit.fit_order, FitOrder::Last);
        assert!(!args("").unwrap().placement.fit.wanted());
    }

    #[test]
    fn defaults() {
        let a = args("").unwrap();
        assert_eq!(
            a.model.synthetic,
            SyntheticChoice {
                arch: Arch::Qwen3Moe,
                preset: Preset::Small
            }
        );
        assert_eq!(
            (
                a.generation.n_predict,
                a.generation.context.ctx_size,
                a.generation.seed
            ),
            (64, 2048, 42)
        );
        assert_eq!(a.generation.context.flash_attn, FlashAttention::Auto);
        assert_eq!(a.placement.cpu_moe_layers, None);
    }

    #[test]
    fn bad_values_are_errors() {
        for line in [
            "-n lots",
            "-ot nobuffer",
            "--frobnicate",
            "-m",
            "--synthetic qwen3moe",
            "--synthetic nosuch:tiny",
            "--synthetic qwen3moe:full",
            "-fa maybe",
            "--cpu-moe-layers 5-2",
            "--fit-order sideways",
            "-fitt lots",
        ] {
            let err = args(line).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{line}");
        }
        assert_eq!(args("--help").unwrap_err().exit_code(), 0);
    }
}
