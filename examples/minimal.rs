//! The smallest complete program: load a GGUF model with the routed experts of its first
//! layers in host memory, format a chat with the model's own template, stream the reply.
//! `cargo run --release --example minimal -- model.gguf "Why is the sky blue?" --n-cpu-moe 20`

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use llama_cpp_moe::{AddAssistant, AddSpecial, ModelParams, ParseSpecial, SamplerBuilder};
use llama_cpp_moe::{Backend, ChatMessage, Context, ContextParams, GenerateParams, Model};

/// Chat with a GGUF model whose routed experts stay in host memory.
#[derive(Parser)]
struct Args {
    /// GGUF model file
    model: PathBuf,
    /// What to ask
    #[arg(default_value = "Write a haiku about the sea.")]
    prompt: String,
    /// Keep the routed experts of the first N layers in host memory (llama.cpp: --n-cpu-moe)
    #[arg(long, default_value_t = 8)]
    n_cpu_moe: u32,
    /// Most tokens to generate
    #[arg(short = 'n', long, default_value_t = 128)]
    n_predict: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let backend = Backend::init();
    // Every layer on the accelerator (if any) but the experts `with_cpu_moe` keeps on the host.
    let params = ModelParams::default().with_all_gpu_layers();
    let params = params.with_cpu_moe(args.n_cpu_moe);
    let model = Model::load(&backend, &args.model, &params)?;
    let mut ctx = Context::new(&model, &ContextParams::default().with_n_ctx(4096))?;
    let vocab = model.vocab();
    let mut sampler = SamplerBuilder::new().with_temp(0.7).dist(&vocab, 42)?;
    let chat = [ChatMessage::new("user", args.prompt)];
    let chat = model.apply_chat_template(&chat, AddAssistant::Yes)?;
    let prompt = vocab.tokenize(&chat, AddSpecial::Yes, ParseSpecial::Yes)?;
    let params = GenerateParams::default().with_max_tokens(args.n_predict);
    let mut stream = ctx.generate(&mut sampler, &prompt, params);
    let mut stdout = std::io::stdout().lock();
    for piece in &mut stream {
        stdout.write_all(piece?.text.as_bytes())?;
        stdout.flush()?;
    }
    writeln!(stdout, "{}", stream.flush())?;
    Ok(())
}
