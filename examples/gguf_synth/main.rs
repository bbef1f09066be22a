//! Writes a synthetic GGUF model with the exact tensor layout of a real MoE architecture.
//!
//! ```text
//! cargo run --release --example gguf_synth -- --arch qwen3moe --preset tiny --type q8_0 --seed 1 -o model.gguf
//! cargo run --release --example gguf_synth -- --list
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llama_cpp_moe_gguf::synth::{Arch, Preset, Progress, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufFile, TensorKind};

const USAGE: &str = "\
usage: gguf_synth --arch ARCH [--preset tiny|small|full] [--type TYPE] [--expert-type TYPE]
                  [--seed N] [--quantize] -o OUT.gguf
       gguf_synth --list
       gguf_synth --inspect FILE.gguf

  --arch         qwen3moe | gpt-oss | phimoe | deepseek | mixtral | llama
  --preset       tiny (default), small or full (the public model's real shape)
  --type         weight type: f16, q8_0, q4_0, mxfp4 (= MXFP4 experts, Q8_0 elsewhere)
                 default: q8_0, mxfp4 for gpt-oss
  --expert-type  type of the routed expert tensors only
  --seed         weight seed (default 0); same seed, same bytes
  --quantize     quantise normal noise with ggml even for full presets (slow)
  --list         print every arch and preset with parameter count and file size
                 (with --type: sizes for that weight type)
  --inspect      read any GGUF file and print its MoE layout and bytes per layer";

struct Args {
    arch: Option<Arch>,
    preset: Preset,
    ty: Option<GgmlType>,
    expert_ty: Option<GgmlType>,
    seed: u64,
    quantize: bool,
    out: Option<PathBuf>,
    list: bool,
    inspect: Option<PathBuf>,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s).ok_or_else(|| format!("unknown type {s:?}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        arch: None,
        preset: Preset::Tiny,
        ty: None,
        expert_ty: None,
        seed: 0,
        quantize: false,
        out: None,
        list: false,
        inspect: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let flag = flag.to_string_lossy().into_owned();
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .map(|v| v.to_string_lossy().into_owned())
        };
        match flag.as_str() {
            "--arch" => a.arch = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--preset" => a.preset = value()?.parse().map_err(|e| format!("{e}"))?,
            "--type" => a.ty = Some(parse_type(&value()?)?),
            "--expert-type" => a.expert_ty = Some(parse_type(&value()?)?),
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--quantize" => a.quantize = true,
            "--list" => a.list = true,
            "--inspect" => {
                a.inspect = Some(PathBuf::from(it.next().ok_or("--inspect needs a path")?))
            }
            "-o" | "--out" => a.out = Some(PathBuf::from(it.next().ok_or("-o needs a path")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

fn list(ty: Option<GgmlType>) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<9} {:<6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>12} {:>13}  reference",
        "arch", "preset", "layers", "embd", "experts", "vocab", "type", "params", "file size"
    );
    for arch in Arch::ALL {
        for preset in Preset::ALL {
            let mut spec = SynthSpec::new(arch, preset);
            if let Some(t) = ty {
                spec = spec.weight_type(t);
            }
            let h = spec.hparams_ref();
            let experts = if h.n_expert > 0 {
                format!("{}/{}", h.n_expert_used, h.n_expert)
            } else {
                "-".into()
            };
            let ty = match ty {
                Some(t) => t.name(),
                None if arch == Arch::GptOss => "mxfp4",
                None => "q8_0",
            };
            let params = spec.n_params()? as f64;
            let params = if params >= 1e9 {
                format!("{:.2}B", params / 1e9)
            } else {
                format!("{:.2}M", params / 1e6)
            };
            println!(
                "{:<9} {:<6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>12} {:>13}  {}",
                arch.cli_name(),
                preset.name(),
                h.n_layer,
                h.n_embd,
                experts,
                h.n_vocab,
                ty,
                params,
                human(spec.file_size()?),
                arch.reference_model()
            );
        }
    }
    Ok(())
}

fn inspect(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let f = GgufFile::open(path)?;
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "{}: GGUF v{}, arch {}, {} layers, experts {} (used {}, shared {}), {} tensors, {}",
        path.display(),
        f.version(),
        f.architecture().unwrap_or("?"),
        opt(f.block_count()),
        opt(f.expert_count()),
        opt(f.expert_used_count()),
        opt(f.expert_shared_count()),
        f.tensors().len(),
        human(f.file_size())
    );
    print!("{:>6}", "layer");
    for k in TensorKind::ALL {
        print!(" {:>14}", k.name());
    }
    println!(" {:>12}", "total");
    for l in f.bytes_by_layer() {
        print!(
            "{:>6}",
            l.layer.map_or("global".to_owned(), |l| l.to_string())
        );
        for k in TensorKind::ALL {
            print!(" {:>14}", human(l.bytes(k)));
        }
        println!(" {:>12}", human(l.total()));
    }
    let experts: u64 = f.expert_tensors().map(|t| t.n_bytes).sum();
    println!(
        "routed experts: {} of {}",
        human(experts),
        human(f.file_size())
    );
    Ok(())
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.list {
        return list(a.ty);
    }
    if let Some(path) = &a.inspect {
        return inspect(path);
    }
    let arch = a.arch.ok_or("--arch is required (or --list)")?;
    let out = a.out.ok_or("-o OUT.gguf is required")?;
    let mut spec = SynthSpec::new(arch, a.preset).seed(a.seed);
    if let Some(t) = a.ty {
        spec = spec.weight_type(t);
    }
    if let Some(t) = a.expert_ty {
        spec = spec.expert_type(t);
    }
    if a.quantize {
        spec = spec.random_blocks(false);
    }
    let total = spec.file_size()?;
    eprintln!(
        "writing {} ({}, {}) to {}",
        arch,
        a.preset,
        human(total),
        out.display()
    );
    let start = Instant::now();
    let mut last = Instant::now();
    let report = spec.write_with_progress(&out, |p: Progress| {
        if last.elapsed().as_millis() >= 500 || p.tensors_done == p.tensors_total {
            last = Instant::now();
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r{:>5.1}%  {} / {}  {:.0} MB/s  tensor {}/{}   ",
                100.0 * p.written as f64 / p.total.max(1) as f64,
                human(p.written),
                human(p.total),
                p.written as f64 / secs / 1e6,
                p.tensors_done,
                p.tensors_total
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    eprintln!();
    println!(
        "wrote {}: {} bytes ({}), {} tensors, {:.3}B params in {:.1} s ({:.0} MB/s)",
        out.display(),
        report.bytes,
        human(report.bytes),
        report.n_tensors,
        report.n_params as f64 / 1e9,
        report.seconds,
        report.bytes as f64 / report.seconds.max(1e-9) / 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gguf_synth: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gguf_synth: {e}");
            ExitCode::FAILURE
        }
    }
}
