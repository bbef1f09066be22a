//! Replays every committed input of every fuzz target on stable Rust: the seeds
//! (`fuzz/seeds/`), the coverage-minimised corpus the campaigns left
//! (`fuzz/corpus/`) and each crash ever found (`fuzz/regressions/`). A regression
//! that comes back fails here, in `.ci/run`, without nightly or cargo-fuzz.
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
}

#[test]
fn override_patterns_corpus() {
    replay("override_patterns", llama_cpp_moe_fuzz::check_override_patterns);
}

#[test]
fn example_args_corpus() {
    replay("example_args", llama_cpp_moe_fuzz::check_example_args);
}

#[test]
fn model_load_corpus() {
    replay("model_load", llama_cpp_moe_fuzz::check_model_load);
}

/// The load seeds must load, or the load target would only ever explore rejections.
#[test]
fn model_load_seeds_are_loadable_models() {
    llama_cpp_moe::log::set_silent(true);
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
