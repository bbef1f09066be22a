//! What a user's first program does with the published crates: writes a tiny synthetic
//! MoE model with the GGUF crate, loads it with every routed expert in host RAM, and
//! greedily generates a few tokens. Prints the llama.cpp the -sys package built, so
//! `.ci/run` can check it was the bundled source.

use llama_cpp_moe::{
    AddSpecial, Backend, Context, ContextParams, GenerateParams, Model, ModelParams,
    ParseSpecial, SamplerBuilder,
};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: llama-cpp-moe-offline-consumer DIR (where the model is written)")?;
    let path = std::path::Path::new(&dir).join("offline-consumer-qwen3moe-tiny.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(1)
        .write(&path)?;
    println!("llama.cpp: {}", llama_cpp_moe::LLAMA_CPP_VERSION);
    println!("llama.cpp source: {}", llama_cpp_moe::sys::LLAMA_CPP_SOURCE_DIR);

    let backend = Backend::init();
    let params = ModelParams::default().with_cpu_moe_all();
    let model = Model::load(&backend, &path, &params)?;
    let experts = model.placement().experts_on_host();
    println!("experts in host RAM: {} tensors", experts.count);
    if experts.count == 0 {
        return Err("no routed expert was kept in host RAM".into());
    }

    let mut ctx = Context::new(&model, &ContextParams::default())?;
    let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
    let prompt = model
        .vocab()
        .tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
    let out = ctx.complete(
        &mut sampler,
        &prompt,
        GenerateParams::default().with_max_tokens(8),
    )?;
    println!("generated {} tokens: {:?}", out.tokens.len(), out.text);
    if out.tokens.is_empty() {
        return Err("no token was generated".into());
    }
    Ok(())
}
