//! `quantize`: llama-quantize over the safe crate, with its flag names.
//!
//! ```text
//! cargo run --release --example quantize -- model-f16.gguf model-q8.gguf Q8_0
//! # the MoE mix people hand-tune: 4-bit routed experts, Q8_0 attention and shared tensors
//! cargo run --release --example quantize -- --tensor-type 'ffn_.*_exps=q4_0' \
//!     model-f16.gguf model-mix.gguf Q8_0 8
//! ```
//! Not here (yet): reading an `--imatrix` file (the library takes the values through
//! `QuantizeParams::with_imatrix_entry`) and deriving the output name when it is left
//! out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use llama_cpp_moe::model::KvValue;
use llama_cpp_moe::quantize::{quantize, Ftype, QuantizeParams};
use llama_cpp_moe::{Backend, ErrorChain, GgmlType};
use llama_cpp_moe_gguf::GgufFile;

/// Quantize a GGUF model (llama-quantize's flags).
#[derive(Parser, Debug)]
#[command(name = "quantize")]
struct Args {
    /// Input model (F32/F16/BF16, or quantized with --allow-requantize).
    input: PathBuf,
    /// Output model.
    output: PathBuf,
    /// File type: Q4_0, Q8_0, Q4_K_M, F16, ... or its llama_ftype number; COPY copies.
    #[arg(value_name = "TYPE")]
    ftype: String,
    /// Threads (default: all hardware threads).
    #[arg(value_name = "NTHREADS")]
    threads: Option<u32>,
    /// Threads, as a flag.
    #[arg(long = "nthreads", value_name = "N", conflicts_with = "threads")]
    nthreads: Option<u32>,
    /// Allow requantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    /// Leave output.weight unquantized.
    #[arg(long)]
    leave_output_tensor: bool,
    /// Every tensor in the default type, without the k-quant mixes' rules.
    #[arg(long)]
    pure: bool,
    /// Type of output.weight.
    #[arg(long, value_name = "GGML_TYPE", value_parser = parse_type)]
    output_tensor_type: Option<GgmlType>,
    /// Type of the token embeddings.
    #[arg(long, value_name = "GGML_TYPE", value_parser = parse_type)]
    token_embedding_type: Option<GgmlType>,
    /// Tensors matching the regex PATTERN get TYPE (repeatable; first match wins).
    #[arg(long, value_name = "PATTERN=TYPE", value_parser = parse_tensor_type)]
    tensor_type: Vec<(String, GgmlType)>,
    /// Layers to drop, comma-separated (later ones are renumbered).
    #[arg(long, value_name = "L1,L2,...", value_delimiter = ',')]
    prune_layers: Vec<u32>,
    /// Write as many shards as the input has.
    #[arg(long)]
    keep_split: bool,
    /// Metadata to set: KEY=int:N, KEY=float:F, KEY=bool:true|false, KEY=str:S.
    #[arg(long, value_name = "KEY=TYPE:VALUE", value_parser = parse_kv)]
    override_kv: Vec<(String, KvValue)>,
    /// Log the result's size without writing it.
    #[arg(long)]
    dry_run: bool,
    /// Show llama.cpp's log (one line per tensor).
    #[arg(short, long)]
    verbose: bool,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s).ok_or_else(|| format!("unknown ggml type {s:?}"))
}

fn parse_tensor_type(s: &str) -> Result<(String, GgmlType), String> {
    let (pattern, ty) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not PATTERN=TYPE"))?;
    Ok((pattern.to_owned(), parse_type(ty)?))
}

fn parse_kv(s: &str) -> Result<(String, KvValue), String> {
    let bad = || format!("{s:?} is not KEY=TYPE:VALUE");
    let (key, rest) = s.split_once('=').ok_or_else(bad)?;
    let (ty, value) = rest.split_once(':').ok_or_else(bad)?;
    let value = match ty {
        "int" => KvValue::Int(value.parse().map_err(|_| bad())?),
        "float" => KvValue::Float(value.parse().map_err(|_| bad())?),
        "bool" => KvValue::Bool(value.parse().map_err(|_| bad())?),
        "str" => KvValue::Str(value.to_owned()),
        _ => return Err(bad()),
    };
    Ok((key.to_owned(), value))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.verbose {
        llama_cpp_moe::logging::set_silent(true);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("quantize: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    let copy = a.ftype.eq_ignore_ascii_case("COPY");
    let ftype = if copy {
        Ftype::Q8_0 // ignored by llama.cpp when only copying
    } else {
        Ftype::from_name(&a.ftype).ok_or_else(|| format!("unknown file type {:?}", a.ftype))?
    };
    let mut params = QuantizeParams::new(ftype)
        .with_threads(a.threads.or(a.nthreads).unwrap_or(0))
        .with_only_copy(copy)
        .with_allow_requantize(a.allow_requantize)
        .with_quantize_output_tensor(!a.leave_output_tensor)
        .with_pure(a.pure)
        .with_keep_split(a.keep_split)
        .with_dry_run(a.dry_run);
    if let Some(ty) = a.output_tensor_type {
        params = params.with_output_tensor_type(ty);
    }
    if let Some(ty) = a.token_embedding_type {
        params = params.with_token_embedding_type(ty);
    }
    for (pattern, ty) in &a.tensor_type {
        params = params.with_tensor_type(pattern.clone(), *ty);
    }
    for &layer in &a.prune_layers {
        params = params.with_pruned_layer(layer);
    }
    for (key, value) in &a.override_kv {
        params = params.with_kv_override(key.clone(), value.clone());
    }

    let start = Instant::now();
    quantize(&Backend::init(), &a.input, &a.output, &params)
        .map_err(|e| ErrorChain(&e).to_string())?;
    if a.dry_run {
        println!("dry run done in {:.1} s", start.elapsed().as_secs_f64());
        return Ok(());
    }
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({:.2} MiB) -> {} ({:.2} MiB) in {:.1} s",
        a.input.display(),
        size(&a.input) as f64 / 1048576.0,
        a.output.display(),
        size(&a.output) as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    // What each type ended up holding, read back from the output.
    let file = GgufFile::open(&a.output).map_err(|e| ErrorChain(&e).to_string())?;
    let mut by_type = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for t in file.tensors() {
        let entry = by_type.entry(t.ty.name().to_owned()).or_default();
        entry.0 += 1;
        entry.1 += t.ty.tensor_bytes(&t.shape).unwrap_or(0);
    }
    for (ty, (n, bytes)) in by_type {
        println!(
            "  {ty:>8}: {n:4} tensors, {:.2} MiB",
            bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
