//! Loads the GGUF model given as the only argument, keeps its routed experts in host
//! RAM, and greedily generates a few tokens: what an application does first.

use llama_cpp_moe::{
    AddSpecial, Backend, Context, ContextParams, GenerateParams, Model, ModelParams,
    ParseSpecial, SamplerBuilder,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .ok_or("usage: llama-cpp-moe-consumer MODEL.gguf")?;
    println!("llama.cpp: {}", llama_cpp_moe::LLAMA_CPP_VERSION);

    let backend = Backend::init();
    let params = ModelParams::default().with_cpu_moe_all();
    let model = Model::load(&backend, &path, &params)?;
    let experts = model.placement().experts_on_host();
    println!("experts in host RAM: {} tensors", experts.count);

    let mut ctx = Context::new(&model, &ContextParams::default())?;
    let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
    let prompt = model.vocab().tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
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
