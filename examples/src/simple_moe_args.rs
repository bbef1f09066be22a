//! `simple_moe`'s command-line flags, spelled as llama.cpp spells them (`-ngl`, `-ub`,
//! `-ot`, ...).
//!
//! Hand-written because llama.cpp's multi-letter single-dash flags (`-ngl 99`) do not
//! fit the usual argument-parser conventions.

use std::path::PathBuf;

/// `-ngl`: a layer count or every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    All,
    Count(u32),
}

/// One `-ot PATTERN=BUFT` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideArg {
    pub pattern: String,
    pub buft: String,
}

#[derive(Debug, Clone)]
pub struct Args {
    pub model: Option<PathBuf>,
    pub synthetic: (String, String),
    pub prompt: String,
    pub n_predict: u32,
    pub ctx_size: u32,
    pub threads: Option<i32>,
    pub batch_size: u32,
    pub ubatch_size: u32,
    pub n_gpu_layers: Option<GpuLayers>,
    pub cpu_moe: bool,
    pub n_cpu_moe: Option<u32>,
    pub cpu_moe_layers: Option<Vec<u32>>,
    pub n_cpu_ffn: Option<u32>,
    pub overrides: Vec<OverrideArg>,
    pub rpc: Vec<String>,
    pub devices: Vec<String>,
    pub seed: u32,
    pub temp: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub flash_attn: Option<bool>,
    pub no_op_offload: bool,
    pub verbose: bool,
    pub no_stream: bool,
    pub json: bool,
}

pub const USAGE: &str = "\
usage: simple_moe [options]

Model:
  -m,  --model FILE            GGUF model (default: a synthetic MoE model, see --synthetic)
       --synthetic ARCH:PRESET synthetic model to generate and cache when no -m is given
                               (default qwen3moe:small; archs: qwen3moe gpt-oss phimoe
                               deepseek mixtral llama; presets: tiny small)
Generation:
  -p,  --prompt TEXT           prompt (default: a short story opening)
  -n,  --n-predict N           tokens to generate (default 64)
  -c,  --ctx-size N            context size (default 2048)
  -t,  --threads N             CPU threads (default: llama.cpp's choice)
  -b,  --batch-size N          logical batch size (default 2048)
  -ub, --ubatch-size N         physical batch size (default 512)
  -s,  --seed N                sampling seed (default 42)
       --temp T                temperature; 0 = greedy (default 0)
       --top-k N, --top-p P, --min-p P
  -fa, --flash-attn on|off|auto
Placement:
  -ngl, --n-gpu-layers N|all   layers on accelerators (default: llama.cpp's)
       --cpu-moe               keep every routed expert in host memory
       --n-cpu-moe N           ... only those of the first N layers
       --cpu-moe-layers LIST   ... those of these layers, e.g. 36-47 or 0,2,4-6
       --n-cpu-ffn N           keep the dense FFN of the first N layers in host memory
  -ot, --override-tensor PATTERN=BUFT[,...]   repeatable
       --rpc HOST:PORT[,...]   use ggml RPC servers as devices
  -dev, --device NAME[,...]    devices to use (see --list-devices)
       --list-devices          print the devices and exit
       --no-op-offload         do not offload host-tensor ops to accelerators
Output:
       --no-stream             print the text at the end instead of streaming it
       --json                  print exactly one JSON object on stdout
  -v,  --verbose               show llama.cpp's log
";

/// Parses `a-b,c` into sorted, de-duplicated layer indices.
pub fn parse_layer_list(s: &str) -> Result<Vec<u32>, String> {
    let mut layers = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid layer list {s:?}: expected e.g. 36-47 or 0,2,4-6");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().map_err(|_| bad())?;
                let b: u32 = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                layers.extend(a..=b);
            }
            None => layers.push(part.parse().map_err(|_| bad())?),
        }
    }
    if layers.is_empty() {
        return Err(format!("empty layer list {s:?}"));
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
}

fn parse_override(s: &str) -> Result<Vec<OverrideArg>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|item| {
            let (pattern, buft) = item.split_once('=').ok_or_else(|| {
                format!("invalid override {item:?}: expected PATTERN=BUFFER_TYPE")
            })?;
            if pattern.is_empty() || buft.is_empty() {
                return Err(format!(
                    "invalid override {item:?}: expected PATTERN=BUFFER_TYPE"
                ));
            }
            Ok(OverrideArg {
                pattern: pattern.to_owned(),
                buft: buft.to_owned(),
            })
        })
        .collect()
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: invalid value {v:?}"))
}

/// `Ok(None)` means "print usage / devices and exit successfully" is handled by the caller.
pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        model: None,
        synthetic: ("qwen3moe".into(), "small".into()),
        prompt: "Once upon a time, in a valley full of clockwork birds,".into(),
        n_predict: 64,
        ctx_size: 2048,
        threads: None,
        batch_size: 2048,
        ubatch_size: 512,
        n_gpu_layers: None,
        cpu_moe: false,
        n_cpu_moe: None,
        cpu_moe_layers: None,
        n_cpu_ffn: None,
        overrides: Vec::new(),
        rpc: Vec::new(),
        devices: Vec::new(),
        seed: 42,
        temp: 0.0,
        top_k: None,
        top_p: None,
        min_p: None,
        flash_attn: None,
        no_op_offload: false,
        verbose: false,
        no_stream: false,
        json: false,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-m" | "--model" => a.model = Some(PathBuf::from(value()?)),
            "--synthetic" => {
                let v = value()?;
                let (arch, preset) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--synthetic: expected ARCH:PRESET, got {v:?}"))?;
                a.synthetic = (arch.to_owned(), preset.to_owned());
            }
            "-p" | "--prompt" => a.prompt = value()?,
            "-n" | "--n-predict" => a.n_predict = number(flag, &value()?)?,
            "-c" | "--ctx-size" => a.ctx_size = number(flag, &value()?)?,
            "-t" | "--threads" => a.threads = Some(number(flag, &value()?)?),
            "-b" | "--batch-size" => a.batch_size = number(flag, &value()?)?,
            "-ub" | "--ubatch-size" => a.ubatch_size = number(flag, &value()?)?,
            "-ngl" | "--n-gpu-layers" | "--gpu-layers" => {
                let v = value()?;
                a.n_gpu_layers = Some(if v == "all" {
                    GpuLayers::All
                } else {
                    GpuLayers::Count(number(flag, &v)?)
                });
            }
            "-cmoe" | "--cpu-moe" => a.cpu_moe = true,
            "-ncmoe" | "--n-cpu-moe" => a.n_cpu_moe = Some(number(flag, &value()?)?),
            "--cpu-moe-layers" => a.cpu_moe_layers = Some(parse_layer_list(&value()?)?),
            "--n-cpu-ffn" => a.n_cpu_ffn = Some(number(flag, &value()?)?),
            "-ot" | "--override-tensor" => a.overrides.extend(parse_override(&value()?)?),
            "--rpc" => a.rpc.extend(
                value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "-dev" | "--device" => a.devices.extend(
                value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "-s" | "--seed" => a.seed = number(flag, &value()?)?,
            "--temp" => a.temp = number(flag, &value()?)?,
            "--top-k" => a.top_k = Some(number(flag, &value()?)?),
            "--top-p" => a.top_p = Some(number(flag, &value()?)?),
            "--min-p" => a.min_p = Some(number(flag, &value()?)?),
            "-fa" | "--flash-attn" => {
                let v = value()?;
                a.flash_attn = match v.as_str() {
                    "on" | "1" | "true" => Some(true),
                    "off" | "0" | "false" => Some(false),
                    "auto" => None,
                    _ => return Err(format!("{flag}: expected on, off or auto, got {v:?}")),
                };
            }
            "--no-op-offload" => a.no_op_offload = true,
            "-v" | "--verbose" => a.verbose = true,
            "--no-stream" => a.no_stream = true,
            "--json" => a.json = true,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn llama_cpp_spellings() {
        let a =
            args("-m x.gguf -ngl all -ub 128 -ot a=CPU,b=RPC0 -ot c=CPU --n-cpu-moe 3").unwrap();
        assert_eq!(a.n_gpu_layers, Some(GpuLayers::All));
        assert_eq!(a.ubatch_size, 128);
        assert_eq!(a.overrides.len(), 3);
        assert_eq!(a.overrides[1].buft, "RPC0");
        assert_eq!(a.n_cpu_moe, Some(3));
    }

    #[test]
    fn layer_lists() {
        assert_eq!(parse_layer_list("36-39").unwrap(), vec![36, 37, 38, 39]);
        assert_eq!(parse_layer_list("4,0,2-3,2").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_layer_list("5-2").is_err());
        assert!(parse_layer_list("x").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(args("-n lots").is_err());
        assert!(args("-ot nobuffer").is_err());
        assert!(args("--frobnicate").is_err());
        assert!(args("-m").is_err());
    }
}
