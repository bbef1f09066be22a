//! Dry runs (`no_alloc` model + context) against real loads of the same configuration,
//! on the loopback RPC device as a real second device: per memory location, model and
//! context bytes within 1 %, compute within 5 %.

mod model_support;

use llama_cpp_moe::model::{bytes_by_location, LoadMode, MemoryBytes, MemoryLocation};
use llama_cpp_moe::{Context, ContextParams, Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, model, rpc_endpoint};

/// `|a - b| / max(a, b)`, 0 when both are 0.
fn rel_diff(a: usize, b: usize) -> f64 {
    let max = a.max(b);
    if max == 0 {
        0.0
    } else {
        a.abs_diff(b) as f64 / max as f64
    }
}

#[test]
fn dry_run_agrees_with_a_real_load_for_every_arch_on_rpc() {
    let backend = backend();
    rpc_endpoint(&backend);
    let ctx_params = ContextParams::default().with_n_ctx(1024).with_n_batch(256);
    println!("arch      cpu-moe  location  model(dry/real)  context(dry/real)  compute(dry/real)");
    for arch in Arch::ALL {
        for cpu_moe in [false, true] {
            let params = if cpu_moe {
                ModelParams::default().with_cpu_moe_all()
            } else {
                ModelParams::default()
            };
            let path = model(arch);
            let dry = Model::dry_run(&backend, &path, &params, &ctx_params)
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            // A real load with plain reads, like the dry run: with mmap the host row is
            // the mapped file range, which spans the tensors of other devices too.
            let read = params.clone().with_load_mode(LoadMode::Read);
            let real_model = Model::load(&backend, &path, &read).unwrap();
            let ctx = Context::new(&real_model, &ctx_params).unwrap();
            assert_eq!(dry.n_ctx, ctx.n_ctx(), "{arch}");
            let real = bytes_by_location(&ctx.memory_breakdown().unwrap());
            let dry_locs = dry.by_location();
            // The same places hold memory, and the RPC device holds weights.
            let holding = |locs: &[(MemoryLocation, MemoryBytes)]| {
                let mut v: Vec<String> = locs
                    .iter()
                    .filter(|(_, b)| b.total() > 0)
                    .map(|(l, _)| l.name())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                holding(&dry_locs),
                holding(&real),
                "{arch} cpu_moe={cpu_moe}"
            );
            assert!(
                dry_locs
                    .iter()
                    .any(|(l, b)| matches!(l, MemoryLocation::Device(_)) && b.model > 0),
                "{arch}: nothing on the RPC device: {dry_locs:?}"
            );
            for (loc, d) in &dry_locs {
                let r = real
                    .iter()
                    .find(|(l, _)| l == loc)
                    .map(|(_, b)| *b)
                    .unwrap_or_default();
                let (dm, dc, dk) = (
                    rel_diff(d.model, r.model),
                    rel_diff(d.context, r.context),
                    rel_diff(d.compute, r.compute),
                );
                println!(
                    "{:<9} {:<8} {:<9} {}/{} ({:.3}%)  {}/{} ({:.3}%)  {}/{} ({:.3}%)",
                    arch.cli_name(),
                    cpu_moe,
                    loc.name(),
                    d.model,
                    r.model,
                    dm * 100.0,
                    d.context,
                    r.context,
                    dc * 100.0,
                    d.compute,
                    r.compute,
                    dk * 100.0
                );
                let at = format!("{arch} cpu_moe={cpu_moe} {}", loc.name());
                assert!(dm <= 0.01, "{at}: model {} vs {}", d.model, r.model);
                assert!(dc <= 0.01, "{at}: context {} vs {}", d.context, r.context);
                assert!(dk <= 0.05, "{at}: compute {} vs {}", d.compute, r.compute);
            }
            // For the record: the host row of a memory-mapped load.
            {
                let mapped = Model::load(&backend, &path, &params).unwrap();
                let ctx = Context::new(&mapped, &ctx_params).unwrap();
                let host = bytes_by_location(&ctx.memory_breakdown().unwrap())[0].1;
                println!(
                    "{:<9} {:<8} host (mmap load) model {} (dry run {})",
                    arch.cli_name(),
                    cpu_moe,
                    host.model,
                    dry.host().model
                );
            }
            // The dry run's tensor placement is the real one.
            let real_placement = real_model.placement();
            for t in dry.placement.tensors() {
                let r = real_placement.tensor(&t.name).unwrap();
                assert_eq!(t.bytes, r.bytes, "{arch} {}", t.name);
                assert_eq!(t.on_host, r.on_host, "{arch} {}", t.name);
            }
        }
    }
}

#[test]
fn dry_run_on_a_shape_only_gpt_oss_120b_matches_its_tensor_table() {
    use llama_cpp_moe_gguf::synth::{PublicModel, SynthSpec};
    use llama_cpp_moe_gguf::GgufFile;
    let backend = backend();
    let path = model_support::temp_dir().join("gpt-oss-120b-shape-only.gguf");
    let report = SynthSpec::public(PublicModel::GptOss120b)
        .write_shape_only(&path)
        .unwrap();
    println!(
        "shape-only gpt-oss-120b: {} bytes apparent, written in {:.3} s",
        report.bytes, report.seconds
    );
    let table: u64 = GgufFile::open(&path)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.n_bytes)
        .sum();
    // All on the CPU: no weight is read, nothing is allocated.
    let params = ModelParams::default().with_n_gpu_layers(0);
    let start = std::time::Instant::now();
    let dry = Model::dry_run(
        &backend,
        &path,
        &params,
        &ContextParams::default().with_n_ctx(8192),
    )
    .unwrap();
    let total = dry.total();
    println!(
        "dry run in {:.2} s: model {} (table {table}), context {}, compute {}",
        start.elapsed().as_secs_f64(),
        total.model,
        total.context,
        total.compute
    );
    assert_eq!(dry.n_layer, 36);
    assert_eq!(dry.n_expert, 128);
    let diff = rel_diff(total.model, table as usize);
    assert!(diff <= 0.01, "model {} vs table {table}", total.model);
    assert!(total.context > 0 && total.compute > 0, "{total:?}");
    std::fs::remove_file(&path).unwrap();
}

/// Every message in `err`'s source chain, `": "`-joined (what anyhow's `{:#}` prints).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A dry run whose context cannot be sized names the model file, which the context
/// error alone cannot (a planner runs dry runs of several configurations).
#[test]
fn a_failed_dry_run_context_names_the_file() {
    let backend = backend();
    let path = model(Arch::Qwen3Moe);
    let err = Model::dry_run(
        &backend,
        &path,
        &ModelParams::default(),
        &ContextParams::default().with_n_batch(0),
    )
    .expect_err("n_batch 0 cannot be sized");
    let text = chain(&err);
    let file = path.display().to_string();
    assert_eq!(text.matches(&file).count(), 1, "{text}");
    assert!(text.contains("n_batch"), "{text}");
}
