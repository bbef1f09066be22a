//! One decode step and a 32-token greedy generation on the tiny synthetic qwen3moe,
//! with the experts placed by default and with `with_cpu_moe_all()`.

use criterion::{criterion_group, criterion_main, Criterion};
use llama_cpp_moe::context::ClearData;
use llama_cpp_moe::{
    Backend, Batch, Context, ContextParams, GenerateParams, Model, ModelParams, Output, Pos,
    SamplerBuilder, SeqId,
};
use llama_cpp_moe_benches::{prompt_with_tokens, synthetic_model};
use llama_cpp_moe_gguf::synth::{Arch, Preset};

fn decode(c: &mut Criterion) {
    let backend = Backend::init();
    let path = synthetic_model(Arch::Qwen3Moe, Preset::Tiny).expect("synthetic model");
    let cparams = ContextParams::default()
        .with_n_ctx(256)
        .with_n_batch(256)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    for (name, params) in [
        ("default", ModelParams::default()),
        ("cpu_moe_all", ModelParams::default().with_cpu_moe_all()),
    ] {
        let model = Model::load(&backend, &path, &params).expect("load");
        let vocab = model.vocab();
        let (_, prompt) = prompt_with_tokens(&vocab, 16).expect("tokenize");
        let mut ctx = Context::new(&model, &cparams).expect("context");
        let mut group = c.benchmark_group(format!("tiny_qwen3moe/{name}"));

        // One token on top of the prompt: the prompt stays in the KV cache and each
        // iteration removes the previous step's token first.
        ctx.decode(&Batch::from_tokens(&prompt, Pos(0), SeqId(0)).expect("batch"))
            .expect("prefill");
        let pos = Pos(prompt.len() as i32);
        let mut step = Batch::new();
        step.add(prompt[1], pos, &[SeqId(0)], Output::Yes)
            .expect("batch");
        group.bench_function("decode_step", |b| {
            b.iter(|| {
                ctx.seq_rm(Some(SeqId(0)), pos..).expect("seq_rm");
                ctx.decode(&step).expect("decode");
            })
        });

        let mut sampler = SamplerBuilder::new().greedy(&vocab).expect("sampler");
        let gen = GenerateParams::default()
            .with_max_tokens(32)
            .with_stop_at_eog(false);
        group.bench_function("generate_32_greedy", |b| {
            b.iter(|| {
                ctx.clear_memory(ClearData::Keep).expect("clear");
                let out = ctx
                    .complete(&mut sampler, &prompt, gen.clone())
                    .expect("generate");
                assert_eq!(out.tokens.len(), 32);
                out
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = decode
}
criterion_main!(benches);
