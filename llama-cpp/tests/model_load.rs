//! Loading: model info, typed errors for bad files and paths, the progress callback.

mod model_support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use llama_cpp_moe::model::{KvValue, LoadError};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Model, ModelParams, PathError};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, model, spec, temp_dir};

#[test]
fn model_info_matches_the_synthetic_hparams() {
    let backend = backend();
    for arch in [Arch::Qwen3Moe, Arch::DeepSeek, Arch::Llama] {
        let h = spec(arch).hparams_ref().clone();
        let m = Model::load(&backend, model(arch), &ModelParams::default()).unwrap();
        assert_eq!(m.arch().as_deref(), Some(arch.gguf_name()));
        assert_eq!(m.n_layer(), h.n_layer, "{arch}");
        assert_eq!(m.n_embd(), h.n_embd, "{arch}");
        assert_eq!(m.n_vocab(), h.n_vocab, "{arch}");
        assert_eq!(m.n_expert(), h.n_expert, "{arch}");
        assert_eq!(m.n_expert_used(), h.n_expert_used, "{arch}");
        assert!(m.n_params() > 0 && m.size() > 0, "{arch}");
        assert!(!m.description().is_empty(), "{arch}");
        let block_count = format!("{}.block_count", arch.gguf_name());
        assert_eq!(m.meta_val(&block_count), Some(h.n_layer.to_string()));
        assert_eq!(m.meta_val("no.such.key"), None);
        let meta = m.metadata();
        assert!(meta
            .iter()
            .any(|(k, v)| k == "general.architecture" && v == arch.gguf_name()));
        // The synthetic files carry no chat template; asking must not crash.
        let _ = m.chat_template(None);
        assert_eq!(m.chat_template(Some("no-such-template")), None);
    }
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<ModelParams>();
}

#[test]
fn missing_non_gguf_and_truncated_files_are_typed_errors() {
    let backend = backend();
    let params = ModelParams::default();
    let dir = temp_dir();

    let missing = dir.join("does-not-exist.gguf");
    assert!(matches!(
        Model::load(&backend, &missing, &params),
        Err(LoadError::NotFound(p)) if p == missing
    ));

    let nul = dir.join("a\0b.gguf");
    assert!(matches!(
        Model::load(&backend, &nul, &params),
        Err(LoadError::InvalidPath(PathError::NulByte(p))) if p == nul
    ));

    let text = dir.join("not-a-model.gguf");
    std::fs::write(&text, b"this is not a GGUF file at all, just text\n").unwrap();
    let err = Model::load(&backend, &text, &params).unwrap_err();
    assert!(
        matches!(&err, LoadError::NotGguf { magic, .. } if magic == b"this"),
        "{err}"
    );

    // Truncation at any point is named before llama.cpp opens the file
    // (`load_errors.rs` checks the details).
    let full = std::fs::read(model(Arch::Qwen3Moe)).unwrap();
    for keep in [16, full.len() / 2, full.len() - 1] {
        let cut = dir.join(format!("truncated-{keep}.gguf"));
        std::fs::write(&cut, &full[..keep]).unwrap();
        let err = Model::load(&backend, &cut, &params).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::TruncatedData { .. } | LoadError::InvalidGguf(_)
            ),
            "{keep}: {err}"
        );
    }
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_load() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let backend = backend();
    let odd = temp_dir().join(OsStr::from_bytes(b"mod\xffel-\xfe.gguf"));
    std::fs::copy(model(Arch::Llama), &odd).unwrap();
    let m = Model::load(&backend, &odd, &ModelParams::default()).unwrap();
    assert_eq!(m.arch().as_deref(), Some("llama"));
}

#[test]
fn progress_reaches_one_and_false_aborts() {
    let backend = backend();
    let path = model(Arch::Mixtral);
    let calls = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(0.0f32));
    let (c, l) = (calls.clone(), last.clone());
    let params = ModelParams::default().with_progress_callback(move |p| {
        c.fetch_add(1, Ordering::Relaxed);
        *l.lock().unwrap() = p;
        true
    });
    Model::load(&backend, &path, &params).unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(*last.lock().unwrap(), 1.0);

    let params = ModelParams::default().with_progress_callback(|_| false);
    let err = Model::load(&backend, &path, &params).unwrap_err();
    assert!(
        matches!(err, LoadError::Aborted(ref p) if *p == path),
        "{err}"
    );
}

#[test]
fn a_panic_in_the_progress_callback_is_resumed_after_llama_cpp_returns() {
    let backend = backend();
    let path = model(Arch::Mixtral);
    let params = ModelParams::default().with_progress_callback(|p| {
        if p > 0.0 {
            panic!("boom at {p}");
        }
        true
    });
    let payload = catch_unwind(AssertUnwindSafe(|| Model::load(&backend, &path, &params)))
        .expect_err("the panic comes back");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(msg.starts_with("boom at"), "{msg}");
    // llama.cpp is still usable afterwards.
    Model::load(&backend, &path, &ModelParams::default()).unwrap();
}

#[test]
fn vocab_only_loads_no_weights() {
    let backend = backend();
    let h = spec(Arch::Qwen3Moe).hparams_ref().clone();
    let params = ModelParams::default().with_vocab_only(true);
    let m = Model::load(&backend, model(Arch::Qwen3Moe), &params).unwrap();
    assert_eq!(m.n_vocab(), h.n_vocab);
    assert!(m
        .placement()
        .tensors()
        .iter()
        .all(|t| t.buffer_type.is_none()));
}

#[test]
fn kv_overrides_reach_the_loaded_model() {
    let backend = backend();
    let path = model(Arch::Qwen3Moe);
    let plain = Model::load(&backend, &path, &ModelParams::default()).unwrap();
    assert!(plain.vocab().adds_bos(), "the synthetic tokenizer adds BOS");
    // The same override llama.cpp's `--override-kv tokenizer.ggml.add_bos_token=bool:false`
    // makes, plus one on a hyper-parameter the graph uses.
    let params = ModelParams::default()
        .with_kv_override("tokenizer.ggml.add_bos_token", KvValue::Bool(false))
        .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(1));
    let overridden = Model::load(&backend, &path, &params).unwrap();
    assert!(!overridden.vocab().adds_bos());
    assert_eq!(
        overridden
            .vocab()
            .tokenize("hello", AddSpecial::Yes, ParseSpecial::No)
            .unwrap()
            .len()
            + 1,
        plain
            .vocab()
            .tokenize("hello", AddSpecial::Yes, ParseSpecial::No)
            .unwrap()
            .len(),
        "BOS is no longer added"
    );
    let expected = spec(Arch::Qwen3Moe).hparams_ref().n_expert_used;
    assert_eq!(plain.n_expert_used(), expected);
    assert_eq!(overridden.n_expert_used(), 1);
}
