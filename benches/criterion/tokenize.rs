//! Tokenizing 4 KiB of English prose with the tiny synthetic qwen3moe's byte-level BPE.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Backend, Model, ModelParams};
use llama_cpp_moe_benches::{prose, synthetic_model};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use std::hint::black_box;

fn tokenize(c: &mut Criterion) {
    let path = synthetic_model(Arch::Qwen3Moe, Preset::Tiny).expect("synthetic model");
    let model = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_vocab_only(true),
    )
    .expect("load vocabulary");
    let vocab = model.vocab();
    let text = prose(4096);
    let n = vocab
        .tokenize(&text, AddSpecial::Yes, ParseSpecial::No)
        .expect("tokenize")
        .len();
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function(format!("4KiB_prose_{n}_tokens"), |b| {
        b.iter(|| {
            vocab
                .tokenize(black_box(&text), AddSpecial::Yes, ParseSpecial::No)
                .expect("tokenize")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = tokenize
}
criterion_main!(benches);
