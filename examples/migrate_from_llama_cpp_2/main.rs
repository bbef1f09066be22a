//! Load a model, tokenize a prompt, decode it, sample greedily N tokens and print them:
//! the program of docs/migrating-from-llama-cpp-2.md, spelled with llama-cpp-moe.
//! `cargo run --release --example migrate_from_llama_cpp_2 -- model.gguf "The sky is" 32`

use std::io::Write;
use std::process::ExitCode;

use llama_cpp_moe::{AddSpecial, Backend, Batch, Context, ContextParams, ErrorChain, Model};
use llama_cpp_moe::{ModelParams, Output, ParseSpecial, Pos, RenderSpecial, SamplerBuilder};
use llama_cpp_moe::{SeqId, Utf8Decoder};

/// Every llama-cpp-moe call returns its own error type; `?` turns each into the one
/// crate `Error`, so this function needs no error type of its own.
fn generate(path: &str, prompt: &str, n_predict: usize) -> llama_cpp_moe::Result<String> {
    let backend = Backend::init();
    let model = Model::load(&backend, path, &ModelParams::default())?;
    // The context borrows the model: it cannot outlive it.
    let mut ctx = Context::new(&model, &ContextParams::default().with_n_ctx(2048))?;
    let vocab = model.vocab();

    let tokens = vocab.tokenize(prompt, AddSpecial::Yes, ParseSpecial::No)?;
    // One sequence from position 0, logits for the last token only.
    let mut batch = Batch::from_tokens(&tokens, Pos(0), SeqId(0))?;
    ctx.decode(&batch)?;

    let mut sampler = SamplerBuilder::new().greedy(&vocab)?;
    let mut text = Utf8Decoder::new();
    let mut out = String::new();
    for n in 0..n_predict {
        // Picks from the logits of the batch's last token and accepts the pick.
        let token = sampler.sample(&ctx, batch.len() - 1)?;
        if vocab.is_eog(token) {
            break;
        }
        let piece = text.push(&vocab.token_to_bytes(token, RenderSpecial::No)?);
        print!("{piece}");
        let _ = std::io::stdout().flush();
        out.push_str(&piece);
        // The next position: after the prompt and the n tokens generated before.
        let pos = Pos((tokens.len() + n) as i32);
        batch.clear();
        batch.add(token, pos, &[SeqId(0)], Output::Yes)?;
        ctx.decode(&batch)?;
    }
    let rest = text.finish();
    println!("{rest}");
    out.push_str(&rest);
    Ok(out)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), prompt, n) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: migrate_from_llama_cpp_2 MODEL.gguf [PROMPT] [N_PREDICT]");
        return ExitCode::FAILURE;
    };
    let prompt = prompt.unwrap_or_else(|| "The capital of France is".to_owned());
    let Ok(n_predict) = n.as_deref().unwrap_or("32").parse::<usize>() else {
        eprintln!("N_PREDICT must be a number");
        return ExitCode::FAILURE;
    };
    match generate(&path, &prompt, n_predict) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // ErrorChain prints the error and every cause under it, each once.
            eprintln!("error: {}", ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
