//! The analytic decode bound of a MoE model whose experts live in host RAM: every
//! generated token reads its active experts' weights once, so
//! `tokens/s <= memory bandwidth / active bytes per token`.
//!
//! ```text
//! cargo run --release --example decode_bound -- [--bandwidth] [--threads N] [--gbps G] [--model F]...
//! ```
//!
//! Without `--model`, the tensor tables come from the synthetic factory's specs
//! (`SynthSpec::new(arch, Preset::Full).tensors()`: the public models' exact shapes, no
//! file written). `--model F` reads a GGUF file's tensor table with our reader instead.
//! `--bandwidth` measures this machine's read and memcpy bandwidth first.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use llama_cpp_moe_cli as cli;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufFile, TensorKind};

type BoxError = Box<dyn std::error::Error>;

/// The analytic decode bound of MoE models whose experts live in host RAM:
/// tokens/s <= memory bandwidth / active bytes per token.
#[derive(Debug, clap::Parser)]
#[command(name = "decode_bound")]
struct Args {
    /// Measure this machine's read and memcpy bandwidth first
    #[arg(long = "bandwidth")]
    measure: bool,
    /// Threads of the read-bandwidth measurement
    #[arg(short = 't', long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// A bandwidth to compute the bound for, in GB/s (repeatable)
    #[arg(long = "gbps", value_name = "G")]
    extra_gbps: Vec<f64>,
    /// A GGUF file whose tensor table to use instead of the synthetic full presets
    /// (repeatable)
    #[arg(short = 'm', long = "model", value_name = "F")]
    models: Vec<PathBuf>,
}

/// DDR5-5600, two 64-bit channels: 5600 MT/s x 8 bytes x 2 (theoretical peak).
const DDR5_DUAL_CHANNEL_GBPS: f64 = 89.6;

/// Bytes a model reads per generated token, split the way MoE offload splits them.
struct Shape {
    name: String,
    n_expert: u64,
    n_expert_used: u64,
    expert_bytes: u64,
    /// Everything else a token reads in full: attention, norms, router, shared experts,
    /// dense FFNs, the output head. The token embedding is left out: a token reads one
    /// row of it, not the matrix.
    dense_bytes: u64,
    file_bytes: u64,
}

impl Shape {
    fn from_table<'a>(
        name: String,
        n_expert: u64,
        n_expert_used: u64,
        tensors: impl Iterator<Item = (&'a str, u64)>,
    ) -> Shape {
        let mut s = Shape {
            name,
            n_expert,
            n_expert_used,
            expert_bytes: 0,
            dense_bytes: 0,
            file_bytes: 0,
        };
        for (tensor, bytes) in tensors {
            s.file_bytes += bytes;
            match TensorKind::of(tensor) {
                TensorKind::RoutedExpert => s.expert_bytes += bytes,
                TensorKind::Embedding => {}
                _ => s.dense_bytes += bytes,
            }
        }
        s
    }

    fn active_expert_bytes(&self) -> f64 {
        self.expert_bytes as f64 * self.n_expert_used as f64 / self.n_expert.max(1) as f64
    }
}

fn synth_shape(arch: Arch, preset: Preset, ty: Option<GgmlType>) -> Result<Shape, BoxError> {
    let mut spec = SynthSpec::new(arch, preset);
    if let Some(ty) = ty {
        spec = spec.weight_type(ty);
    }
    let h = spec.hparams_ref();
    let (n_expert, used) = (u64::from(h.n_expert), u64::from(h.n_expert_used));
    let tensors = spec.tensors()?;
    let ty_name = ty.map_or("default types".to_owned(), |t| t.name().to_owned());
    Ok(Shape::from_table(
        format!(
            "{} {} ({}, {ty_name})",
            arch.cli_name(),
            preset.name(),
            arch.reference_model()
        ),
        n_expert,
        used,
        tensors.iter().map(|t| (t.name.as_str(), t.nbytes())),
    ))
}

fn file_shape(path: &PathBuf) -> Result<Shape, BoxError> {
    let f = GgufFile::open(path)?;
    Ok(Shape::from_table(
        path.display().to_string(),
        f.expert_count().unwrap_or(0),
        f.expert_used_count().unwrap_or(0),
        f.tensors().iter().map(|t| (t.name.as_str(), t.n_bytes)),
    ))
}

/// Best of `reps` passes summing a 1 GiB buffer with `threads` threads: read bandwidth
/// in GB/s (10^9 bytes), the figure a decode that streams weights can reach.
fn read_bandwidth(threads: usize, reps: usize) -> f64 {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("sum"))
                .fold(0, u64::wrapping_add)
        });
        black_box(total);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

/// Best of `reps` single-threaded copies of 512 MiB: (read + written bytes) / time.
fn memcpy_bandwidth(reps: usize) -> f64 {
    let n = 512usize << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (2 * n) as f64 / best / 1e9
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1u64 << 20) as f64)
}

fn main() -> Result<(), BoxError> {
    let Args {
        measure,
        threads,
        extra_gbps,
        models,
    } = cli::parse(&[]);
    let threads = usize::from(threads);

    let mut bandwidths: Vec<(String, f64)> = Vec::new();
    if measure {
        let read = read_bandwidth(threads, 5);
        let copy = memcpy_bandwidth(5);
        println!("measured here: read (sum of 1 GiB, {threads} threads, best of 5) {read:.1} GB/s; memcpy (512 MiB, 1 thread, read+write bytes, best of 5) {copy:.1} GB/s");
        bandwidths.push((format!("measured read, {threads} threads"), read));
    }
    for g in extra_gbps {
        bandwidths.push(("given".into(), g));
    }
    bandwidths.push((
        "DDR5-5600 dual channel, peak".into(),
        DDR5_DUAL_CHANNEL_GBPS,
    ));

    let shapes = if models.is_empty() {
        vec![
            synth_shape(Arch::Qwen3Moe, Preset::Full, Some(GgmlType::Q8_0))?,
            synth_shape(Arch::Qwen3Moe, Preset::Full, Some(GgmlType::Q4_0))?,
            synth_shape(Arch::GptOss, Preset::Full, None)?,
            synth_shape(Arch::Qwen3Moe, Preset::Small, Some(GgmlType::Q8_0))?,
        ]
    } else {
        models.iter().map(file_shape).collect::<Result<_, _>>()?
    };

    println!();
    println!("| model | file | experts (all) | experts used | active expert bytes/token | other bytes/token | bandwidth | bound, experts only (rest on GPU) | bound, all on CPU |");
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for s in &shapes {
        let active = s.active_expert_bytes();
        for (label, gbps) in &bandwidths {
            let bw = gbps * 1e9;
            println!(
                "| {} | {} | {} | {}/{} | {} | {} | {label}: {gbps:.1} GB/s | {:.1} tok/s | {:.1} tok/s |",
                s.name,
                gib(s.file_bytes as f64),
                gib(s.expert_bytes as f64),
                s.n_expert_used,
                s.n_expert,
                mib(active),
                mib(s.dense_bytes as f64),
                bw / active,
                bw / (active + s.dense_bytes as f64),
            );
        }
    }
    Ok(())
}
