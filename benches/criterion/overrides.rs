//! Building the tensor-override array: the `--n-cpu-moe N` builder alone, and
//! `ModelParams::validate`, which builds the NULL-terminated raw array llama.cpp reads
//! (and checks explicit patterns with std::regex through the shim).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use llama_cpp_moe::{Backend, ModelParams};
use std::hint::black_box;

fn overrides(c: &mut Criterion) {
    let backend = Backend::init();
    let mut group = c.benchmark_group("overrides");
    for n in [1u32, 48, 1000] {
        group.bench_with_input(BenchmarkId::new("with_cpu_moe", n), &n, |b, &n| {
            b.iter(|| ModelParams::default().with_cpu_moe(black_box(n)))
        });
        let params = ModelParams::default().with_cpu_moe(n);
        assert_eq!(params.tensor_overrides().count(), n as usize);
        group.bench_with_input(BenchmarkId::new("validate_cpu_moe", n), &params, |b, p| {
            b.iter(|| p.validate(&backend).expect("valid"))
        });
        // Explicit `-ot` patterns are user input: each one goes through std::regex.
        let explicit = (0..n).fold(ModelParams::default(), |p, i| {
            p.with_tensor_override(format!(r"blk\.{i}\.ffn_(up|down|gate)_exps"), "CPU")
        });
        group.bench_with_input(
            BenchmarkId::new("validate_explicit_regex", n),
            &explicit,
            |b, p| b.iter(|| p.validate(&backend).expect("valid")),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = overrides
}
criterion_main!(benches);
