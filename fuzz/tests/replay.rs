//! Replays every committed input of every fuzz target on stable Rust: the seeds
//! (`fuzz/seeds/`), the coverage-minimised corpus the campaigns left
//! (`fuzz/corpus/`) and each crash ever found (`fuzz/regressions/`). A regression
//! that comes back fails here, in `.ci/run`, without nightly or cargo-fuzz.
//!
//! It also runs a short seeded mutation run per target (`llama_cpp_moe_fuzz::Mutator`),
//! sized by `FUZZ_SHORT_RUNS` (default 20,000 per parser target, 1/40 of that for loads).
//!
//! Run: `cargo test --manifest-path fuzz/Cargo.toml --no-default-features`.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for set in ["seeds", "corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(set).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn short_runs() -> usize {
    std::env::var("FUZZ_SHORT_RUNS")
        .map(|v| v.parse().expect("FUZZ_SHORT_RUNS is a number"))
        .unwrap_or(20_000)
}

/// `runs` mutations of the target's inputs, seeded: the same inputs every time.
fn short_run(target: &str, check: fn(&[u8]), runs: usize) {
    let inputs: Vec<Vec<u8>> = inputs(target)
        .iter()
        .map(|p| std::fs::read(p).expect("read corpus file"))
        .collect();
    let mut mutator = llama_cpp_moe_fuzz::Mutator::new(runs as u64);
    let failures = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/short-run-failures");
    std::fs::create_dir_all(&failures).expect("failure dir");
    for run in 0..runs {
        let data = mutator.mutate(&inputs[run % inputs.len()]);
        if target != "gguf_open" {
            // An abort or a hang inside C++ cannot be caught: keep the input where it is found.
            std::fs::write(failures.join(format!("{target}-last")), &data).expect("save input");
        }
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(payload) = outcome {
            let file = failures.join(format!("{target}-{run}"));
            std::fs::write(&file, &data).expect("save failing input");
            eprintln!(
                "{target}: run {run} failed; input saved to {}",
                file.display()
            );
            std::panic::resume_unwind(payload);
        }
    }
    llama_cpp_moe_fuzz::remove_scratch_file(target);
    println!("{target}: {runs} seeded mutations, no failure");
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds for {target}: run make_seeds");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        // A failing input names itself before the check's own panic message.
        eprintln!("{target}: {}", path.display());
        check(&data);
    }
    println!("{target}: {} inputs replayed", files.len());
}

#[test]
fn gguf_open_corpus() {
    replay("gguf_open", llama_cpp_moe_fuzz::check_gguf_open);
    short_run(
        "gguf_open",
        llama_cpp_moe_fuzz::check_gguf_open,
        short_runs(),
    );
}

#[test]
fn override_patterns_corpus() {
    replay(
        "override_patterns",
        llama_cpp_moe_fuzz::check_override_patterns,
    );
    short_run(
        "override_patterns",
        llama_cpp_moe_fuzz::check_override_patterns,
        short_runs(),
    );
}

#[test]
fn example_args_corpus() {
    replay("example_args", llama_cpp_moe_fuzz::check_example_args);
    // clap builds the whole command per parse (~1 ms in a debug build).
    short_run(
        "example_args",
        llama_cpp_moe_fuzz::check_example_args,
        short_runs() / 10,
    );
}

#[test]
fn model_load_corpus() {
    replay("model_load", llama_cpp_moe_fuzz::check_model_load);
    short_run(
        "model_load",
        llama_cpp_moe_fuzz::check_model_load,
        short_runs() / 40,
    );
}

#[test]
fn context_params_corpus() {
    replay("context_params", llama_cpp_moe_fuzz::check_context_params);
    // A context on a tiny model takes a few milliseconds to reserve its graphs.
    short_run(
        "context_params",
        llama_cpp_moe_fuzz::check_context_params,
        short_runs() / 40,
    );
}

#[test]
fn state_load_corpus() {
    replay("state_load", llama_cpp_moe_fuzz::check_state_load);
    // A restore plus two one-token decodes on a tiny model: about a millisecond.
    short_run(
        "state_load",
        llama_cpp_moe_fuzz::check_state_load,
        short_runs() / 10,
    );
}

#[test]
fn lora_load_corpus() {
    replay("lora_load", llama_cpp_moe_fuzz::check_lora_load);
    // A load, a context and two decodes on the tiny llama: a few milliseconds.
    short_run(
        "lora_load",
        llama_cpp_moe_fuzz::check_lora_load,
        short_runs() / 40,
    );
}

/// The LoRA seeds load and run (the check would only explore rejections otherwise).
#[test]
fn lora_load_seeds_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/lora_load");
    let model = llama_cpp_moe_fuzz::lora_model();
    for (name, _) in llama_cpp_moe_fuzz::lora_seeds() {
        let path = root.join(&name);
        let adapter = llama_cpp_moe::adapter::LoraAdapter::load(model, &path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "alora" {
            assert_eq!(adapter.alora_invocation_tokens().len(), 3);
        }
    }
}

/// Freshly made state seeds restore (`state_seeds` checks each), and the committed ones
/// are all there (their bytes depend on the CPU's float kernels, so only names compare).
#[test]
fn state_load_seeds_restore() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/state_load");
    for (name, _) in llama_cpp_moe_fuzz::state_seeds() {
        assert!(root.join(&name).is_file(), "{name}: run make_seeds");
    }
}

/// The load seeds must load, or the load target would only ever explore rejections.
#[test]
fn model_load_seeds_are_loadable_models() {
    llama_cpp_moe::logging::set_silent(true);
    let backend = llama_cpp_moe::Backend::init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/model_load");
    for entry in std::fs::read_dir(dir).expect("seed dir") {
        let path = entry.expect("seed").path();
        let params = llama_cpp_moe::ModelParams::default().with_n_gpu_layers(0);
        let model = llama_cpp_moe::Model::load(&backend, &path, &params)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(model.n_layer(), 1, "{}", path.display());
        assert!(llama_cpp_moe_gguf::GgufFile::open(&path).is_ok());
    }
}

/// The crashes and hangs this fuzzing found that the crate does not prevent yet (see
/// fuzz/README.md, "Known crashes"), run against the real entry points without the
/// skips in `llama_cpp_moe_fuzz::known`: `Model::load` rejects the two files with
/// `LoadError::InvalidModel` and `ModelParams` validation rejects the pattern, where the
/// process used to abort or hang.
#[test]
fn known_crashes_are_fixed() {
    llama_cpp_moe::logging::set_silent(true);
    let backend = llama_cpp_moe::Backend::init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let params = llama_cpp_moe::ModelParams::default().with_n_gpu_layers(0);
    let dup = root.join("known-crashes/model_load/vocab-duplicate-token");
    assert!(llama_cpp_moe::Model::load(&backend, &dup, &params).is_err());
    let no_expert_used = root.join("known-crashes/model_load/expert-used-count-zero");
    assert!(llama_cpp_moe::Model::load(&backend, &no_expert_used, &params).is_err());
    let too_many_used = root.join("known-crashes/model_load/expert-used-count-above-expert-count");
    assert!(llama_cpp_moe::Model::load(&backend, &too_many_used, &params).is_err());
    let nul_dup = root.join("known-crashes/model_load/vocab-tokens-equal-up-to-nul");
    assert!(llama_cpp_moe::Model::load(&backend, &nul_dup, &params).is_err());
    let zero_dim = root.join("known-crashes/model_load/zero-dimension-hides-shape-overflow");
    match llama_cpp_moe::Model::load(&backend, &zero_dim, &params) {
        Err(llama_cpp_moe::model::LoadError::InvalidGguf(e)) => {
            assert!(e.to_string().contains("overflows"), "{e}");
        }
        other => panic!("expected InvalidGguf, got {:?}", other.map(|_| ())),
    }

    let input = std::fs::read(root.join("known-crashes/override_patterns/nested-quantifier-redos"))
        .expect("known crash");
    let text = String::from_utf8_lossy(&input[1..]).into_owned();
    let pattern = text.split('\n').next().expect("pattern").to_owned();
    let model = root.join("seeds/model_load/qwen3moe-seed");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let params = llama_cpp_moe::ModelParams::default()
            .with_n_gpu_layers(0)
            .with_tensor_override(pattern, "CPU");
        let result = llama_cpp_moe::Model::load(&llama_cpp_moe::Backend::init(), model, &params);
        let _ = done_tx.send(result.is_err());
    });
    let rejected = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a nested-quantifier pattern hangs the load");
    assert!(rejected, "a nested-quantifier pattern is accepted");

    // The public `model::regex_search` on an unvalidated pattern: the campaign of
    // 2026-11-30 (second session) found it still searched with std::regex and hung.
    let input = std::fs::read(
        root.join("known-crashes/override_patterns/regex-search-nested-quantifier-redos"),
    )
    .expect("known hang");
    let text = String::from_utf8_lossy(&input[1..]).into_owned();
    let pattern = text.split('\n').next().expect("pattern").to_owned();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(llama_cpp_moe::model::regex_search(
            &pattern,
            "blk.0.ffn_up_exps",
        ));
    });
    let searched = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("regex_search hangs on a nested-quantifier pattern");
    assert_eq!(
        searched, None,
        "regex_search runs a nested-quantifier pattern"
    );
}

/// The aborts and crashes the `context_params` target found (fuzz/README.md, "Known
/// crashes" 8-10): `Context::new` refuses the parameters, or `seq_add` the shift,
/// where llama.cpp used to abort or crash; each input then runs the whole check.
#[test]
fn known_context_crashes_are_fixed() {
    use llama_cpp_moe::context::MemoryError;
    use llama_cpp_moe::{Batch, Context, Pos, SeqId, Token};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("known-crashes/context_params");
    let case = |name: &str| {
        let data = std::fs::read(root.join(name)).expect("known crash");
        llama_cpp_moe_fuzz::check_context_params(&data);
        llama_cpp_moe_fuzz::context_case(&data)
    };
    let models = llama_cpp_moe_fuzz::context_models();
    for name in [
        "seq-max-above-batch",
        "mean-pooling-micro-batch-not-multiple-of-seqs",
    ] {
        let (model, params, _) = case(name);
        let refused = Context::new(&models[model % models.len()], &params);
        assert!(
            matches!(
                refused,
                Err(llama_cpp_moe::context::ContextError::InvalidParams(_))
            ),
            "{name}: {:?}",
            refused.map(|_| ())
        );
    }
    let (model, params, _) = case("mean-pooling-turned-on-then-shift");
    let mut ctx = Context::new(&models[model % models.len()], &params).expect("context");
    assert!(ctx.set_embeddings(true).is_err());
    for name in ["quantized-k-shift-without-rotation", "bf16-k-shift"] {
        let (model, params, _) = case(name);
        let mut ctx = Context::new(&models[model % models.len()], &params).expect("context");
        let batch = Batch::from_tokens(&[Token(1), Token(2)], Pos(0), SeqId(0)).expect("batch");
        ctx.decode(&batch).expect("decode");
        assert_eq!(
            ctx.seq_add(SeqId(0), .., 1),
            Err(MemoryError::ShiftUnsupported),
            "{name}"
        );
    }
}

/// Each known crash is recognised by its skip in `llama_cpp_moe_fuzz::known`, so
/// campaigns and the short run never stop at it again.
#[test]
fn known_crash_classes_are_recognised() {
    use llama_cpp_moe_fuzz::known;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("known-crashes");
    let open = |name: &str| {
        llama_cpp_moe_gguf::GgufFile::open(root.join("model_load").join(name))
            .expect("our reader accepts the file llama.cpp aborts on")
    };
    assert!(known::duplicate_token(&open("vocab-duplicate-token")));
    assert!(known::no_expert_used(&open("expert-used-count-zero")));
    let input =
        std::fs::read(root.join("override_patterns/nested-quantifier-redos")).expect("known crash");
    let text = String::from_utf8_lossy(&input[1..]).into_owned();
    assert!(known::nested_quantifier(
        text.split('\n').next().expect("pattern")
    ));
    assert!(!known::nested_quantifier(r"blk\.(2|3)\.ffn_.*_exps"));
    assert!(!known::nested_quantifier(r"a+?b{1,3}?\*+"));
}

/// The abort the state tests found (fuzz/README.md, "Known crashes" 11): truncated state
/// files are typed errors, where llama.cpp's file reader aborted.
#[test]
fn known_state_crashes_are_fixed() {
    use llama_cpp_moe::context::StateError;
    use llama_cpp_moe::{Context, SeqId};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("known-crashes/state_load");
    for name in ["sequence-file-truncated", "context-file-truncated"] {
        let data = std::fs::read(root.join(name)).expect("known crash");
        llama_cpp_moe_fuzz::check_state_load(&data);
        let models = llama_cpp_moe_fuzz::context_models();
        let model = &models[data[1] as usize % models.len()];
        let params = llama_cpp_moe::ContextParams::default()
            .with_n_ctx(64)
            .with_n_seq_max(2)
            .with_n_threads(1);
        let mut ctx = Context::new(model, &params).expect("context");
        let file = std::env::temp_dir().join(format!("known-state-{}-{name}", std::process::id()));
        std::fs::write(&file, &data[3..]).expect("write state file");
        let result = if name.starts_with("sequence") {
            ctx.seq_state_load_file(&file, SeqId(0)).map(|_| ())
        } else {
            ctx.state_load_file(&file).map(|_| ())
        };
        let _ = std::fs::remove_file(&file);
        assert!(
            matches!(result, Err(StateError::Rejected { .. })),
            "{name}: {result:?}"
        );
    }
}
