//! Expert routing statistics through llama.cpp's eval callback, on synthetic MoE models
//! of every MoE architecture the factory writes.

mod ctx_support;

use ctx_support::{greedy_in_context, load_tiny, small_params};
use llama_cpp_moe::routing::{RoutingError, RoutingStats};
use llama_cpp_moe::{sys, Batch, Context, Error, Model, Pos, SeqId, Token};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset};

fn moe_archs() -> impl Iterator<Item = Arch> {
    Arch::ALL.into_iter().filter(|a| a.is_moe())
}

/// Decodes `prompt` tokens (last output only), then `extra` single tokens.
fn run(ctx: &mut Context<'_>, prompt: usize, extra: usize, first: i32) {
    let tokens: Vec<Token> = (0..prompt as i32).map(|i| Token(first + i % 200)).collect();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).expect("batch"))
        .expect("prompt decode");
    for i in 0..extra {
        let batch = Batch::from_tokens(
            &[Token(first + 3 * i as i32)],
            Pos((prompt + i) as i32),
            SeqId(0),
        )
        .expect("batch");
        ctx.decode(&batch).expect("token decode");
    }
}

fn collected(model: &Model, prompt: usize, extra: usize, first: i32) -> RoutingStats {
    let mut ctx = Context::new(
        model,
        &small_params().with_n_ubatch(8).with_routing_stats(true),
    )
    .expect("context");
    run(&mut ctx, prompt, extra, first);
    ctx.routing_stats().expect("collection is on")
}

#[test]
fn counts_sum_to_tokens_times_experts_used_in_every_moe_layer_of_every_arch() {
    let (prompt, extra) = (21, 3);
    for arch in moe_archs() {
        let hp = Hparams::preset(arch, Preset::Tiny);
        let model = load_tiny(arch);
        let stats = collected(&model, prompt, extra, 10);
        let k = u64::from(hp.n_expert_used);
        let moe_layers: Vec<u32> = (0..hp.n_layer).filter(|&il| hp.is_moe_layer(il)).collect();
        let seen: Vec<u32> = stats.layers.iter().map(|l| l.layer).collect();
        assert_eq!(seen, moe_layers, "{arch:?}: layers with routing");
        assert_eq!(stats.model.expert_count, hp.n_expert, "{arch:?}");
        assert_eq!(stats.model.expert_used_count, hp.n_expert_used, "{arch:?}");
        assert_eq!(stats.tokens(), (prompt + extra) as u64, "{arch:?}");
        // llama.cpp computes only the output rows in the last layer (inp_out_ids), one
        // per decode here; its gpt-oss graph selects them after the last layer instead
        // (src/models/openai-moe.cpp).
        let outputs_only = arch != Arch::GptOss;
        for l in &stats.layers {
            let last = outputs_only && l.layer == hp.n_layer - 1;
            let tokens = if last {
                1 + extra as u64
            } else {
                (prompt + extra) as u64
            };
            assert_eq!(l.tokens, tokens, "{arch:?} layer {}", l.layer);
            assert_eq!(
                l.counts.iter().sum::<u64>(),
                tokens * k,
                "{arch:?} layer {}: {:?}",
                l.layer,
                l.counts
            );
            // ubatches of 8: the prompt takes ceil(21/8) = 3 in inner layers.
            // (in the last layer only those with an output).
            let ubatches = if last { 1 } else { 3 } + extra as u64;
            assert_eq!(l.ubatches, ubatches, "{arch:?} layer {}", l.layer);
            assert!(l.distinct_max as u64 <= (8 * k).min(u64::from(hp.n_expert)));
            assert!(l.distinct_max as u64 >= k, "{arch:?}: {}", l.distinct_max);
            for ((c, w), s) in l.counts.iter().zip(&l.weight_sums).zip(&l.saliency_sums) {
                assert!(w.is_finite() && *w >= 0.0, "{arch:?}: weight sum {w}");
                assert_eq!(*c == 0, *w == 0.0, "{arch:?}: count {c}, weight sum {w}");
                assert!(s.is_finite() && *s >= 0.0, "{arch:?}: saliency sum {s}");
                assert_eq!(*c == 0, *s == 0.0, "{arch:?}: count {c}, saliency sum {s}");
            }
        }
    }
}

/// Where llama.cpp normalises the gate weights over the chosen experts (qwen3moe and
/// Mixtral: `norm_w`; gpt-oss: a softmax over the top-k), each token's weights sum to 1,
/// so the weight sums of a layer add up to its tokens: the final weights were read.
#[test]
fn normalised_gate_weights_sum_to_one_per_token() {
    for arch in [Arch::Qwen3Moe, Arch::Mixtral, Arch::GptOss] {
        let model = load_tiny(arch);
        let stats = collected(&model, 13, 2, 40);
        for l in &stats.layers {
            let sum: f64 = l.weight_sums.iter().sum();
            assert!(
                (sum - l.tokens as f64).abs() < 1e-3 * l.tokens as f64,
                "{arch:?} layer {}: weights sum to {sum} over {} tokens",
                l.layer,
                l.tokens
            );
        }
    }
}

#[test]
fn stats_on_and_off_generate_the_same_tokens() {
    for arch in [Arch::Qwen3Moe, Arch::Mixtral, Arch::DeepSeek] {
        let model = load_tiny(arch);
        let prompt = "The router picks the top experts for every token";
        let off = greedy_in_context(&model, &small_params(), prompt, 24);
        let mut ctx =
            Context::new(&model, &small_params().with_routing_stats(true)).expect("context");
        let on = ctx_support::greedy_completion(&mut ctx, prompt, 24).tokens;
        assert_eq!(on, off, "{arch:?}: stats changed the generation");
        assert!(ctx.routing_stats().expect("on").tokens() > 24, "{arch:?}");
    }
}

#[test]
fn off_by_default() {
    let model = load_tiny(Arch::Qwen3Moe);
    let mut ctx = Context::new(&model, &small_params()).expect("context");
    run(&mut ctx, 5, 1, 3);
    assert!(ctx.routing_stats().is_none());
}

#[test]
fn merged_profiles_equal_one_profile_of_both_runs() {
    let model = load_tiny(Arch::Qwen3Moe);
    let mut a = collected(&model, 17, 2, 5);
    let b = collected(&model, 9, 4, 77);
    a.prompts = 1;
    let mut b = b;
    b.prompts = 1;

    let mut ctx = Context::new(
        &model,
        &small_params().with_n_ubatch(8).with_routing_stats(true),
    )
    .expect("context");
    run(&mut ctx, 17, 2, 5);
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
        .expect("clear");
    run(&mut ctx, 9, 4, 77);
    let both = ctx.routing_stats().expect("on");

    // Through the file format, as a user merges profiles of separate runs.
    let dir = std::env::temp_dir().join(format!("llama-cpp-moe-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (pa, pb) = (dir.join("a.json"), dir.join("b.json"));
    a.save(&pa).expect("save a");
    b.save(&pb).expect("save b");
    let mut merged = RoutingStats::load(&pa).expect("load a");
    merged
        .merge(&RoutingStats::load(&pb).expect("load b"))
        .expect("same model");
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(merged.prompts, 2);
    assert_eq!(merged.tokens(), both.tokens());
    assert_eq!(merged.layers.len(), both.layers.len());
    for (m, o) in merged.layers.iter().zip(&both.layers) {
        assert_eq!(m.layer, o.layer);
        assert_eq!(m.counts, o.counts, "layer {}", m.layer);
        assert_eq!(m.tokens, o.tokens);
        assert_eq!(m.ubatches, o.ubatches);
        assert_eq!(m.distinct_sum, o.distinct_sum);
        assert_eq!(m.distinct_max, o.distinct_max);
        let pairs = m.weight_sums.iter().zip(&o.weight_sums);
        for (x, y) in pairs.chain(m.saliency_sums.iter().zip(&o.saliency_sums)) {
            assert!((x - y).abs() < 1e-4, "layer {}: {x} vs {y}", m.layer);
        }
        assert!((m.entropy() - o.entropy()).abs() < 1e-12);
    }
    assert!(
        merged.summary(3).contains("layer   0"),
        "{}",
        merged.summary(3)
    );
}

#[test]
fn merging_profiles_of_different_models_is_a_typed_error() {
    let qwen = load_tiny(Arch::Qwen3Moe);
    let mixtral = load_tiny(Arch::Mixtral);
    let mut a = collected(&qwen, 5, 1, 1);
    let before = a.clone();
    let b = collected(&mixtral, 5, 1, 1);
    let err = a.merge(&b).expect_err("different models");
    assert!(
        matches!(&err, RoutingError::ModelMismatch { field: "arch", left, right } if left == "qwen3moe" && right == "llama"),
        "{err:?}"
    );
    assert_eq!(a, before, "a refused merge changes nothing");
    let err: Error = err.into();
    assert!(matches!(err, Error::Routing(_)), "{err:?}");
}

/// llama.cpp's warm-up decode routes every token to all experts; it is no workload and
/// is not counted, nor is anything before a reset.
#[test]
fn warmup_decodes_and_reset_are_not_counted() {
    let model = load_tiny(Arch::Qwen3Moe);
    let mut ctx = Context::new(&model, &small_params().with_routing_stats(true)).expect("context");
    // SAFETY: valid context; llama_set_warmup only flips a flag (and graph reuse).
    unsafe { sys::llama_set_warmup(ctx.as_ptr(), true) };
    run(&mut ctx, 6, 0, 9);
    // SAFETY: as above.
    unsafe { sys::llama_set_warmup(ctx.as_ptr(), false) };
    assert_eq!(
        ctx.routing_stats().expect("on").tokens(),
        0,
        "warm-up counted"
    );
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
        .expect("clear");
    // Pinned llama.cpp fact: a decode of the warm-up's shape reuses its graph
    // (llm_graph_params::allow_reuse does not compare cparams.warmup), so it routes to
    // all experts as well and is not counted either.
    run(&mut ctx, 6, 0, 9);
    assert_eq!(
        ctx.routing_stats().expect("on").tokens(),
        0,
        "warm-up graph reused"
    );
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
        .expect("clear");
    run(&mut ctx, 7, 0, 9);
    assert_eq!(ctx.routing_stats().expect("on").tokens(), 7);
    ctx.reset_routing_stats();
    assert_eq!(ctx.routing_stats().expect("on").tokens(), 0);
    assert!(ctx.routing_stats().expect("on").layers.is_empty());
}

/// A router built to send every token to experts 3 and 1 (gpt-oss: zero router weights,
/// biases 10 and 9): the statistics name exactly those experts, with gpt-oss's softmax
/// over the two chosen logits as their weights.
#[test]
fn a_fixed_router_routes_every_token_to_its_experts() {
    let dir = std::env::temp_dir().join(format!(
        "llama-cpp-moe-routing-fixed-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gpt-oss-fixed.gguf");
    llama_cpp_moe_gguf::synth::SynthSpec::new(Arch::GptOss, Preset::Tiny)
        .seed(3)
        .fixed_routing(&[3, 1])
        .write(&path)
        .expect("synthetic model");
    let model = Model::load(
        &llama_cpp_moe::Backend::init(),
        &path,
        &llama_cpp_moe::ModelParams::default().with_n_gpu_layers(0),
    )
    .expect("load");
    let _ = std::fs::remove_dir_all(&dir);
    let stats = collected(&model, 19, 3, 30);
    let w3 = 1.0 / (1.0 + (-1.0f64).exp());
    assert_eq!(stats.layers.len(), 2);
    for l in &stats.layers {
        assert_eq!(l.tokens, 22, "layer {}", l.layer);
        let mut expected = vec![0; 4];
        expected[3] = l.tokens;
        expected[1] = l.tokens;
        assert_eq!(l.counts, expected, "layer {}", l.layer);
        assert_eq!(l.distinct_max, 2);
        assert_eq!(l.distinct_sum, 2 * l.ubatches);
        let t = l.tokens as f64;
        assert!(
            (l.weight_sums[3] - w3 * t).abs() < 1e-4 * t,
            "{:?}",
            l.weight_sums
        );
        assert!(
            (l.weight_sums[1] - (1.0 - w3) * t).abs() < 1e-4 * t,
            "{:?}",
            l.weight_sums
        );
        assert_eq!(l.entropy(), 1.0);
        let saliency = l.saliency();
        for (e, s) in saliency.iter().enumerate() {
            assert_eq!(*s > 0.0, e == 1 || e == 3, "{saliency:?}");
        }
    }
}

/// Decode overhead of collection, as a ratio measured in one run: two contexts of one
/// model, stats off and on, decoding the same tokens one at a time, interleaved so that
/// machine load hits both alike. Prints the ratio of the median per-token times.
///
/// `cargo test --release -p llama-cpp-moe --test routing_stats -- --ignored --nocapture`
/// (the synthetic qwen3moe `small`: 48 layers of 128 experts, 8 used; or the model at
/// `$LLAMA_CPP_MOE_ROUTING_BENCH_MODEL`; threads: `$LLAMA_CPP_MOE_ROUTING_BENCH_THREADS`,
/// default 1).
#[test]
#[ignore = "benchmark"]
fn decode_overhead_of_routing_stats() {
    let path = std::env::var_os("LLAMA_CPP_MOE_ROUTING_BENCH_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let path = std::env::temp_dir().join("llama-cpp-moe-routing-bench-qwen3moe-small.gguf");
            if !path.exists() {
                llama_cpp_moe_gguf::synth::SynthSpec::new(Arch::Qwen3Moe, Preset::Small)
                    .seed(1)
                    .write(&path)
                    .expect("synthetic model");
            }
            path
        });
    let model = Model::load(
        &llama_cpp_moe::Backend::init(),
        &path,
        &llama_cpp_moe::ModelParams::default().with_n_gpu_layers(0),
    )
    .expect("load");
    let threads = std::env::var("LLAMA_CPP_MOE_ROUTING_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let params = small_params().with_n_ctx(512).with_n_threads(threads);
    let mut off = Context::new(&model, &params).expect("context");
    let mut on = Context::new(&model, &params.clone().with_routing_stats(true)).expect("context");
    let n = 160;
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    let (mut cpu_off, mut cpu_on) = (0u64, 0u64);
    for i in 0..n {
        let batch =
            Batch::from_tokens(&[Token(10 + (i * 7) % 300)], Pos(i), SeqId(0)).expect("batch");
        for (ctx, times, cpu) in [
            (&mut off, &mut t_off, &mut cpu_off),
            (&mut on, &mut t_on, &mut cpu_on),
        ] {
            let (start, cpu_start) = (std::time::Instant::now(), thread_cpu_ns());
            ctx.decode(&batch).expect("decode");
            times.push(start.elapsed().as_secs_f64());
            *cpu += thread_cpu_ns().saturating_sub(cpu_start);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m_off, m_on) = (median(&mut t_off), median(&mut t_on));
    let stats = on.routing_stats().expect("on");
    assert_eq!(stats.tokens(), n as u64);
    println!(
        "routing stats decode overhead ({threads} threads): median {:.3} ms off, {:.3} ms on per token: ratio {:.3} \
         (sums {:.1} / {:.1} ms); this thread's CPU time {:.1} / {:.1} ms: ratio {:.3}",
        m_off * 1e3,
        m_on * 1e3,
        m_on / m_off,
        t_off.iter().sum::<f64>() * 1e3,
        t_on.iter().sum::<f64>() * 1e3,
        cpu_off as f64 / 1e6,
        cpu_on as f64 / 1e6,
        cpu_on as f64 / cpu_off.max(1) as f64,
    );
}

/// CPU time of this thread in ns (Linux `/proc/thread-self/schedstat`; 0 elsewhere):
/// with one thread ggml computes on the caller's, and CPU time ignores the waits that
/// other processes cause.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
