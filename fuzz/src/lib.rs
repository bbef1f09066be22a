//! The checks behind each fuzz target, shared by the libFuzzer entry points
//! (`fuzz_targets/`, nightly) and the corpus replay (`tests/replay.rs`, stable).
//!
//! Every check takes arbitrary bytes, drives one public entry point with them, and
//! panics only when that entry point breaks its contract: a panic, an abort, an `Ok`
//! that contradicts what the API documents, or an error that cannot be displayed.
//! Rejecting the input with a typed error is the expected outcome for most inputs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_moe::model::{regex_search, OverrideTarget};
use llama_cpp_moe::{Backend, Model, ModelParams};
use llama_cpp_moe_examples::cli::{one_line, try_parse_from};
use llama_cpp_moe_examples::simple_moe_args::{Args, LLAMA_SPELLINGS};
use llama_cpp_moe_gguf::GgufFile;

/// A per-process scratch file for the targets whose entry point takes a path. It lives
/// in `/dev/shm` when that exists, so a million iterations never touch a disk.
fn scratch_file(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("llama-cpp-moe-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz scratch dir");
        dir
    });
    dir.join(name)
}

fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        // llama.cpp's log for a million rejected files would drown libFuzzer's output;
        // errors are still captured for the typed error.
        llama_cpp_moe::log::set_silent(true);
        Backend::init()
    })
}

/// `GgufFile::open` on `data` written to a file: either a typed error or a file whose
/// tensor table is consistent with what the reader promises.
pub fn check_gguf_open(data: &[u8]) {
    let path = scratch_file("reader.gguf");
    std::fs::write(&path, data).expect("write scratch file");
    match GgufFile::open(&path) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(file) => {
            assert_eq!(file.file_size(), data.len() as u64);
            assert!(matches!(file.version(), 2 | 3), "version {}", file.version());
            assert!(file.alignment() > 0 && file.alignment().is_power_of_two());
            assert!(file.data_offset() <= file.file_size());
            assert_eq!(file.data_offset() % file.alignment(), 0);
            for t in file.tensors() {
                // The reader's promise: every tensor's data lies inside the file.
                let end = t.offset.checked_add(t.n_bytes).expect("offset + size overflows");
                assert!(t.offset >= file.data_offset() && end <= file.file_size());
                assert!(t.shape.len() <= 4);
                let _ = (t.n_elements(), t.kind(), t.layer());
                assert_eq!(file.tensor(&t.name).map(|f| &f.name), Some(&t.name));
            }
            let _ = (
                file.architecture(),
                file.block_count(),
                file.expert_count(),
                file.expert_used_count(),
                file.expert_shared_count(),
                file.context_length(),
                file.embedding_length(),
                file.feed_forward_length(),
                file.expert_feed_forward_length(),
                file.head_count(),
                file.head_count_kv(),
                file.vocab_size(),
            );
            for (key, value) in file.metadata() {
                assert!(file.get(key).is_some());
                let _ = format!("{value:?}");
            }
            let by_layer: u64 = file.bytes_by_layer().iter().map(|l| l.total()).sum();
            let total: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
            assert_eq!(by_layer, total, "bytes_by_layer loses tensors");
            let _ = file.expert_tensors().count() + file.shared_expert_tensors().count();
            let _ = file.global_tensors().count();
        }
    }
}

/// Splits fuzz input into `n` text fields on `\n` (the last one takes the rest).
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut out: Vec<String> = text.splitn(n, '\n').map(str::to_owned).collect();
    out.resize(n, String::new());
    out
}

/// The override-pattern validation: explicit `-ot` patterns and targets, plus the MoE
/// and FFN layer builders, through `ModelParams::validate`. An accepted pattern must be
/// one the loader's `std::regex` can search with; a rejected one is a typed error.
pub fn check_override_patterns(data: &[u8]) {
    let (control, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
    let f = fields(rest, 4);
    let (pattern, target, name, layers) = (&f[0], &f[1], &f[2], &f[3]);
    let mut params = ModelParams::default();
    params = match control & 3 {
        0 => params.with_tensor_override(pattern.as_str(), OverrideTarget::Cpu),
        1 => params.with_tensor_override(pattern.as_str(), target.as_str()),
        2 => params
            .with_tensor_override(pattern.as_str(), "CPU")
            .with_tensor_override(target.as_str(), OverrideTarget::Cpu),
        _ => params,
    };
    let layer_list: Vec<u32> = layers.bytes().map(u32::from).collect();
    let n = u32::from(control >> 4);
    if control & 4 != 0 {
        params = params.with_cpu_moe(n);
    }
    if control & 8 != 0 {
        params = params.with_cpu_moe_layers(layer_list.iter().copied());
    }
    if n > 12 {
        params = params.with_cpu_ffn(n - 12);
    }
    let patterns: Vec<String> = params
        .tensor_overrides()
        .map(|o| o.pattern().to_owned())
        .collect();
    match params.validate(backend()) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(()) => {
            for p in &patterns {
                assert!(
                    regex_search(p, name).is_some(),
                    "validated pattern {p:?} cannot be searched"
                );
            }
        }
    }
    // The classifier's own entry point, on arbitrary pattern/name pairs.
    let _ = regex_search(pattern, name);
}

/// `simple_moe`'s command line (clap plus llama.cpp's `-ngl`-style spellings): `Ok`, or
/// an error that renders as the one line the examples print.
pub fn check_example_args(data: &[u8]) {
    let argv = std::iter::once(OsString::from("simple_moe")).chain(
        data.split(|b| *b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    match try_parse_from::<Args>(argv, LLAMA_SPELLINGS) {
        Ok(args) => {
            let _ = format!("{args:?}");
        }
        Err(e) => {
            let line = one_line(&e);
            assert!(!line.contains('\n'), "not one line: {line:?}");
        }
    }
}

/// `Model::load` (CPU) on `data` written to a file: a typed error, or a model whose
/// basic queries answer.
pub fn check_model_load(data: &[u8]) {
    let path = scratch_file("model.gguf");
    std::fs::write(&path, data).expect("write scratch file");
    let params = ModelParams::default().with_n_gpu_layers(0);
    match Model::load(backend(), &path, &params) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(model) => {
            let _ = (model.n_layer(), model.n_embd(), model.n_vocab(), model.n_expert());
            let _ = (model.arch(), model.description(), model.size(), model.n_params());
            let _ = model.placement();
        }
    }
}
