//! Model, vocabulary and process facts, checked against what the GGUF file declares
//! (read with the gguf crate's reader, not hard-coded), on synthetic models and on the
//! real SmolLM2 when `LLAMA_CPP_MOE_SMOLLM2` is set.

mod ctx_support;

use std::path::{Path, PathBuf};

use ctx_support::write_tiny;
use llama_cpp_moe::model::{FileType, RopeType, SamplingKey};
use llama_cpp_moe::system::{self, NumaStrategy};
use llama_cpp_moe::vocab::{TokenAttrs, VocabError, VocabType};
use llama_cpp_moe::{Backend, Model, ModelParams, Token};
use llama_cpp_moe_gguf::synth::Arch;
use llama_cpp_moe_gguf::{GgufFile, MetaArray, MetaValue};

fn load(path: &Path) -> Model {
    Model::load(
        &Backend::init(),
        path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .expect("load")
}

/// An array of strings from the file's metadata (empty when absent).
fn strings(g: &GgufFile, key: &str) -> Vec<String> {
    match g.get(key).and_then(MetaValue::as_array) {
        Some(MetaArray::String(v)) => v.clone(),
        _ => Vec::new(),
    }
}

/// An array of integers from the file's metadata (empty when absent).
fn ints(g: &GgufFile, key: &str) -> Vec<i64> {
    match g.get(key).and_then(MetaValue::as_array) {
        Some(MetaArray::I32(v)) => v.iter().map(|&x| x.into()).collect(),
        Some(MetaArray::U32(v)) => v.iter().map(|&x| x.into()).collect(),
        _ => Vec::new(),
    }
}

/// An array of floats from the file's metadata (empty when absent).
fn floats(g: &GgufFile, key: &str) -> Vec<f64> {
    match g.get(key).and_then(MetaValue::as_array) {
        Some(MetaArray::F32(v)) => v.iter().map(|&x| x.into()).collect(),
        _ => Vec::new(),
    }
}

/// Checks every model fact against the file's metadata.
fn check_model_facts(path: &Path, model: &Model) {
    let g = GgufFile::open(path).unwrap();
    let arch = g.architecture().unwrap().to_owned();
    assert_eq!(model.arch().as_deref(), Some(arch.as_str()));
    assert_eq!(
        model.meta_val("general.architecture").as_deref(),
        Some(arch.as_str())
    );
    assert_eq!(u64::from(model.n_head()), g.head_count().unwrap(), "{arch}");
    assert_eq!(
        u64::from(model.n_head_kv()),
        g.head_count_kv().or(g.head_count()).unwrap(),
        "{arch}"
    );
    assert_eq!(
        u64::from(model.n_swa()),
        g.arch_u64("attention.sliding_window").unwrap_or(0),
        "{arch}"
    );
    assert_eq!(u64::from(model.n_embd_inp()), g.embedding_length().unwrap());
    assert_eq!(u64::from(model.n_embd_out()), g.embedding_length().unwrap());
    assert_eq!(model.n_layer_nextn(), 0);
    let scale = g.arch_f64("rope.scaling.factor").unwrap_or(0.0);
    let expected = if scale == 0.0 { 1.0 } else { 1.0 / scale };
    assert!(
        (f64::from(model.rope_freq_scale_train()) - expected).abs() < 1e-6,
        "{arch}: {} vs {expected}",
        model.rope_freq_scale_train()
    );
    let ftype = g
        .get("general.file_type")
        .and_then(MetaValue::as_u64)
        .unwrap();
    assert_eq!(model.file_type(), FileType(ftype as u32));
    assert!(!model.file_type().is_guessed());
    assert!(!model.file_type().name().is_empty());
    assert!(!model.is_recurrent() && !model.is_hybrid() && !model.is_diffusion());
    assert!(!model.has_encoder() && model.has_decoder());
    assert_eq!(model.decoder_start_token(), None);
    assert_eq!(model.cls_label(0), None);
    // Recommended sampling defaults: whatever the file holds under general.sampling.*.
    for key in SamplingKey::ALL {
        let name = key.key();
        assert!(name.starts_with("general.sampling."), "{key:?}: {name}");
        assert_eq!(
            model.sampling_default(key).is_some(),
            g.get(&name).is_some(),
            "{name}"
        );
    }
    let names: std::collections::HashSet<String> =
        SamplingKey::ALL.iter().map(|k| k.key()).collect();
    assert_eq!(names.len(), SamplingKey::ALL.len());
}

/// Checks the vocabulary facts against the file's tokenizer arrays.
fn check_vocab_facts(path: &Path, model: &Model) {
    let g = GgufFile::open(path).unwrap();
    let v = model.vocab();
    let tokens = strings(&g, "tokenizer.ggml.tokens");
    assert_eq!(tokens.len(), v.n_tokens());
    let types = ints(&g, "tokenizer.ggml.token_type");
    let scores = floats(&g, "tokenizer.ggml.scores");
    for (i, text) in tokens.iter().enumerate() {
        let t = Token(i as i32);
        assert_eq!(&v.text(t).unwrap(), text, "token {i}");
        let score = scores.get(i).copied().unwrap_or(0.0);
        assert_eq!(f64::from(v.score(t).unwrap()), score, "token {i}");
        let attrs = v.attrs(t).unwrap();
        // llama.cpp's token types: 1 normal, 3 control, 4 user-defined, 6 byte.
        match types.get(i) {
            Some(1) => assert!(attrs.contains(TokenAttrs::NORMAL), "{i}: {attrs:?}"),
            Some(3) => assert!(attrs.contains(TokenAttrs::CONTROL), "{i}: {attrs:?}"),
            Some(4) => assert!(attrs.contains(TokenAttrs::USER_DEFINED), "{i}: {attrs:?}"),
            _ => {}
        }
        assert_eq!(
            attrs.contains(TokenAttrs::CONTROL),
            v.is_control(t),
            "token {i}"
        );
    }
    let model_name = g
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap();
    let expected = match model_name {
        "gpt2" => VocabType::Bpe,
        "llama" => VocabType::Spm,
        "bert" => VocabType::Wpm,
        "t5" => VocabType::Ugm,
        other => panic!("unexpected tokenizer {other}"),
    };
    assert_eq!(v.vocab_type(), expected);
    let add_sep = matches!(
        g.get("tokenizer.ggml.add_sep_token"),
        Some(MetaValue::Bool(true))
    );
    assert_eq!(v.adds_sep(), add_sep);
    let out = Token(v.n_tokens() as i32);
    assert!(matches!(
        v.text(out),
        Err(VocabError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        v.score(Token(-1)),
        Err(VocabError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        v.attrs(out),
        Err(VocabError::TokenOutOfRange { .. })
    ));
}

#[test]
fn synthetic_models_report_what_their_files_declare() {
    for (arch, rope) in [
        (Arch::Llama, RopeType::Norm),
        (Arch::Qwen3Moe, RopeType::Neox),
        (Arch::GptOss, RopeType::Neox),
    ] {
        let path = write_tiny(arch);
        let model = load(&path);
        check_model_facts(&path, &model);
        check_vocab_facts(&path, &model);
        assert_eq!(model.rope_type(), rope, "{arch:?}");
        // The synthetic tokenizer has no fill-in-the-middle or mask tokens.
        let v = model.vocab();
        assert_eq!(
            [
                v.fim_pre(),
                v.fim_suf(),
                v.fim_mid(),
                v.fim_pad(),
                v.fim_rep(),
                v.fim_sep(),
                v.mask()
            ],
            [None; 7]
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// The real SmolLM2, when available (CI always sets it).
fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMA_CPP_MOE_SMOLLM2").map(PathBuf::from);
    if path.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "LLAMA_CPP_MOE_SMOLLM2 is unset under CI=true"
        );
        eprintln!("SKIPPED: set LLAMA_CPP_MOE_SMOLLM2 (scripts/fetch-smollm2.sh)");
    }
    path
}

#[test]
fn smollm2_reports_what_its_file_declares() {
    let Some(path) = smollm2() else { return };
    let model = load(&path);
    check_model_facts(&path, &model);
    check_vocab_facts(&path, &model);
    assert_eq!(model.rope_type(), RopeType::Norm);
    assert_eq!(model.file_type(), FileType::MOSTLY_Q4_1);
    // Grouped-query attention: fewer KV heads than query heads.
    assert!(model.n_head_kv() < model.n_head());
    // Every fill-in-the-middle token llama.cpp found is a special token whose text
    // names its role.
    let v = model.vocab();
    for (t, names) in [
        (v.fim_pre(), &["fim_prefix", "fim_pre"][..]),
        (v.fim_suf(), &["fim_suffix", "fim_suf"][..]),
        (v.fim_mid(), &["fim_middle", "fim_mid"][..]),
        (v.fim_pad(), &["fim_pad"][..]),
        (v.fim_rep(), &["repo_name", "reponame", "fim_rep"][..]),
        (v.fim_sep(), &["file_sep", "fim_sep"][..]),
    ] {
        if let Some(t) = t {
            let text = v.text(t).unwrap();
            assert!(names.iter().any(|n| text.contains(n)), "{t:?}: {text}");
            assert!(v.attrs(t).unwrap().contains(TokenAttrs::CONTROL), "{text}");
        }
    }
}

#[test]
fn process_facts() {
    let backend = Backend::init();
    // Every build of this crate on Linux memory-maps and locks model files.
    assert_eq!(system::supports_mmap(), cfg!(unix));
    assert_eq!(system::supports_mlock(), cfg!(unix));
    assert_eq!(system::supports_rpc(), cfg!(feature = "rpc"));
    let gpu = backend.devices().iter().any(|d| {
        !matches!(
            d.device_type(),
            llama_cpp_moe::DeviceType::Cpu | llama_cpp_moe::DeviceType::Accelerator
        )
    });
    // llama.cpp counts a build with RPC as able to offload (to RPC servers).
    assert_eq!(
        system::supports_gpu_offload(),
        gpu || system::supports_rpc()
    );
    assert!(system::max_parallel_sequences() >= 1);
    let t0 = system::time_us();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let dt = system::time_us() - t0;
    assert!((5_000..5_000_000).contains(&dt), "{dt} us");
    // llama_version() is the library's version, the one the crate version names.
    let v = system::llama_version();
    assert!(
        llama_cpp_moe::LLAMA_CPP_VERSION.contains(&format!("llama{v}"))
            || llama_cpp_moe::LLAMA_CPP_VERSION.contains(&v),
        "{v} vs {}",
        llama_cpp_moe::LLAMA_CPP_VERSION
    );
    // NUMA: idempotent, and models still load afterwards.
    backend.numa_init(NumaStrategy::Distribute);
    backend.numa_init(NumaStrategy::Distribute);
    let path = write_tiny(Arch::Llama);
    let model = load(&path);
    assert!(model.n_layer() > 0);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn token_attrs_format_and_combine() {
    let a = TokenAttrs::CONTROL | TokenAttrs::RSTRIP;
    assert!(a.contains(TokenAttrs::CONTROL) && a.contains(TokenAttrs::RSTRIP));
    assert!(!a.contains(TokenAttrs::NORMAL));
    assert_eq!(
        format!("{:?}", TokenAttrs::UNDEFINED),
        "TokenAttrs(UNDEFINED)"
    );
    assert_eq!(
        format!("{:?}", TokenAttrs::from_bits_retain(1 << 20 | 1 << 2)),
        "TokenAttrs(NORMAL | 0x100000)"
    );
    assert!(TokenAttrs::default().is_empty());
    assert_eq!(a.bits(), (1 << 3) | (1 << 8));
}
