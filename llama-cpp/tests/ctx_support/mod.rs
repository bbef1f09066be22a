//! Helpers shared by the context/vocab/sampler/generate/threads tests: tiny synthetic
//! models generated at test time, loaded once per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{
    Backend, Completion, Context, ContextParams, GenerateParams, Model, ModelParams,
    SamplerBuilder, Token,
};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};

/// Writes the tiny model of `arch` (seed 7) into a per-process temp dir.
pub fn write_tiny(arch: Arch) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llama-cpp-moe-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Unique per call: tests of one binary run in parallel and may write the same arch.
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{arch:?}-tiny-{n}.gguf"));
    SynthSpec::new(arch, Preset::Tiny)
        .seed(7)
        .write(&path)
        .expect("synthetic model");
    path
}

/// Greedy tokens generated after a fixed prompt by the model at `path` loaded with
/// `params`: the harness for "same tokens with and without every offload option".
pub fn greedy_tokens_with(path: &std::path::Path, params: &ModelParams, n: usize) -> Vec<Token> {
    let model = Model::load(&Backend::init(), path, params).expect("load with params");
    greedy_in_context(
        &model,
        &small_params(),
        "The router picks the top experts",
        n,
    )
}

/// `n` greedy tokens (end of generation not stopping them) after `prompt`, in a fresh
/// context of `model` with `params`.
pub fn greedy_in_context(
    model: &Model,
    params: &ContextParams,
    prompt: &str,
    n: usize,
) -> Vec<Token> {
    let mut ctx = Context::new(model, params).expect("context");
    greedy_completion(&mut ctx, prompt, n).tokens
}

/// `n` greedy tokens (end of generation not stopping them) after `prompt` in `ctx`, and
/// their text.
pub fn greedy_completion(ctx: &mut Context<'_>, prompt: &str, n: usize) -> Completion {
    let vocab = ctx.vocab();
    let mut sampler = SamplerBuilder::new().greedy(&vocab).expect("greedy");
    let prompt = vocab
        .tokenize(prompt, AddSpecial::Yes, ParseSpecial::No)
        .expect("tokenize");
    ctx.complete(
        &mut sampler,
        &prompt,
        GenerateParams::default()
            .with_max_tokens(n)
            .with_stop_at_eog(false),
    )
    .expect("generate")
}

/// Loads the tiny model of `arch` on the CPU; the file is removed once loaded.
pub fn load_tiny(arch: Arch) -> Model {
    let path = write_tiny(arch);
    let model = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .expect("load synthetic model");
    let _ = std::fs::remove_file(&path);
    model
}

/// The tiny qwen3moe model, shared by every test of a binary.
pub fn moe() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load_tiny(Arch::Qwen3Moe))
}

/// The tiny dense llama model, shared by every test of a binary.
pub fn dense() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load_tiny(Arch::Llama))
}

/// Small, fast context parameters for tests.
///
/// One thread: the test harness already runs tests in parallel, and ggml's spinning
/// thread barriers crawl when more threads than cores compete (seconds per token).
pub fn small_params() -> ContextParams {
    ContextParams::default()
        .with_n_ctx(256)
        .with_n_batch(64)
        .with_n_ubatch(64)
        .with_n_threads(1)
}

/// A context with [`small_params`].
pub fn small_ctx(model: &Model) -> Context<'_> {
    Context::new(model, &small_params()).expect("context")
}
