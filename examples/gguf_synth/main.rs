//! Writes a synthetic GGUF model with the exact tensor layout of a real MoE architecture.
//!
//! ```text
//! cargo run --release --example gguf_synth -- --arch qwen3moe --preset tiny --type q8_0 --seed 1 -o model.gguf
//! cargo run --release --example gguf_synth -- --list
//! cargo run --release --example gguf_synth -- --model gpt-oss-120b --shape-only -o gpt-oss-120b.gguf
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llama_cpp_moe::ErrorChain;
use llama_cpp_moe_cli as cli;
use llama_cpp_moe_gguf::synth::{Arch, Preset, Progress, PublicModel, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufFile, TensorKind};

/// Write a synthetic GGUF model with the exact tensor layout of a real (MoE)
/// architecture, list the architectures, or inspect any GGUF file.
#[derive(Debug, clap::Parser)]
#[command(name = "gguf_synth")]
#[command(group(clap::ArgGroup::new("mode").args(["arch", "model", "list", "inspect"]).required(true)))]
struct Args {
    /// Architecture: qwen3moe, gpt-oss, phimoe, deepseek, mixtral or llama
    #[arg(long, requires = "out")]
    arch: Option<Arch>,
    /// A public model's exact shape instead of --arch/--preset: gpt-oss-20b,
    /// gpt-oss-120b, qwen3-30b-a3b, qwen3-235b-a22b, phi-3.5-moe, deepseek-moe-16b,
    /// mixtral-8x7b, llama-3.1-8b
    #[arg(long, requires = "out")]
    model: Option<PublicModel>,
    /// Write only the metadata and tensor table; the data region is a sparse hole
    /// (no disk blocks, zeros when read): for dry runs and placement planning
    #[arg(long)]
    shape_only: bool,
    /// tiny, small or full (the public model's real shape)
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// Weight type: f16, q8_0, q4_0, mxfp4 (= MXFP4 experts, Q8_0 elsewhere); default
    /// q8_0, mxfp4 for gpt-oss
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    ty: Option<GgmlType>,
    /// Type of the routed expert tensors only
    #[arg(long = "expert-type", value_name = "TYPE", value_parser = parse_type)]
    expert_ty: Option<GgmlType>,
    /// Weight seed; same seed, same bytes
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Quantise normal noise with ggml even for full presets (slow)
    #[arg(long)]
    quantize: bool,
    /// Output file
    #[arg(short = 'o', long, value_name = "OUT.gguf")]
    out: Option<PathBuf>,
    /// Print every arch and preset with parameter count and file size (with --type:
    /// sizes for that weight type)
    #[arg(long)]
    list: bool,
    /// Read any GGUF file and print its MoE layout and bytes per layer
    #[arg(long, value_name = "FILE.gguf")]
    inspect: Option<PathBuf>,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s).ok_or_else(|| format!("unknown type {s:?}"))
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
    println!();
    println!(
        "{:<16} {:<9} {:>6} {:>6} {:>8} {:>12} {:>13}  (--model NAME)",
        "public model", "arch", "layers", "embd", "experts", "params", "file size"
    );
    for m in PublicModel::ALL {
        let mut spec = SynthSpec::public(m);
        if let Some(t) = ty {
            spec = spec.weight_type(t);
        }
        let h = spec.hparams_ref();
        println!(
            "{:<16} {:<9} {:>6} {:>6} {:>8} {:>11.2}B {:>13}",
            m.name(),
            m.arch().cli_name(),
            h.n_layer,
            h.n_embd,
            format!("{}/{}", h.n_expert_used, h.n_expert),
            spec.n_params()? as f64 / 1e9,
            human(spec.file_size()?)
        );
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
    for l in f.bytes_by_layer()? {
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
    // The argument group makes --arch (which requires -o) the mode when not --list or
    // --inspect.
    let Some(out) = a.out else {
        return Err("-o OUT.gguf is required (or --list, --inspect)".into());
    };
    let (mut spec, what) = match (a.model, a.arch) {
        (Some(m), _) => (SynthSpec::public(m), m.to_string()),
        (None, Some(arch)) => (
            SynthSpec::new(arch, a.preset),
            format!("{arch} ({})", a.preset),
        ),
        (None, None) => return Err("--arch or --model is required".into()),
    };
    spec = spec.seed(a.seed);
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
    if a.shape_only {
        let report = spec.write_shape_only(&out)?;
        println!(
            "wrote {} shape-only: {} bytes ({}, data region sparse), {} tensors, {:.3}B params \
             in {:.3} s",
            out.display(),
            report.bytes,
            human(report.bytes),
            report.n_tensors,
            report.n_params as f64 / 1e9,
            report.seconds
        );
        return Ok(());
    }
    eprintln!("writing {what} ({}) to {}", human(total), out.display());
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
    match run(cli::parse(&[])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gguf_synth: {}", ErrorChain(&*e));
            ExitCode::FAILURE
        }
    }
}
