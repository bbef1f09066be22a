//! Damaged GGUF files get a typed error that names the problem, found by our own reader
//! before llama.cpp opens the file; what our reader accepts keeps llama.cpp's message.

mod model_support;

use std::path::PathBuf;

use llama_cpp_moe::model::{KvValue, LoadError};
use llama_cpp_moe::{Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use llama_cpp_moe_gguf::GgufFile;
use model_support::{backend, model, temp_dir};

/// The tiny qwen3moe's bytes.
fn good() -> Vec<u8> {
    std::fs::read(model(Arch::Qwen3Moe)).unwrap()
}

/// Writes `bytes` as `name` in the test dir and loads it.
fn load(name: &str, bytes: &[u8]) -> (PathBuf, LoadError) {
    let path = temp_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = Model::load(&backend(), &path, &ModelParams::default())
        .expect_err("a damaged file must not load");
    (path, err)
}

/// Position just after the length-prefixed string `s` (a key or a tensor name).
fn after_string(file: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    file.windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("{s:?} not in file"))
        + needle.len()
}

/// Offset of the type field of tensor `name`'s table entry.
fn type_field(file: &[u8], name: &str) -> usize {
    let dims_at = after_string(file, name);
    let n_dims = u32::from_le_bytes(file[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

#[test]
fn bad_magic_is_named() {
    let mut bytes = good();
    bytes[..4].copy_from_slice(b"GGUX");
    let (_, err) = load("bad-magic.gguf", &bytes);
    assert!(
        matches!(&err, LoadError::NotGguf { magic, .. } if magic == b"GGUX"),
        "{err}"
    );
}

#[test]
fn an_unsupported_version_is_named() {
    let mut bytes = good();
    bytes[4..8].copy_from_slice(&4u32.to_le_bytes());
    let (_, err) = load("version-4.gguf", &bytes);
    assert!(
        matches!(err, LoadError::UnsupportedVersion { version: 4, .. }),
        "{err}"
    );
}

#[test]
fn truncated_data_names_the_tensor_and_the_missing_bytes() {
    let bytes = good();
    let table = GgufFile::open(model(Arch::Qwen3Moe)).unwrap();
    for missing in [1u64, 1000, bytes.len() as u64 / 3] {
        let keep = bytes.len() as u64 - missing;
        // The first tensor (in table order) whose data the cut file lacks.
        let victim = table
            .tensors()
            .iter()
            .find(|t| t.offset + t.n_bytes > keep)
            .unwrap();
        let (path, err) = load(&format!("cut-{missing}.gguf"), &bytes[..keep as usize]);
        let LoadError::TruncatedData {
            tensor,
            start,
            end,
            file_size,
            ..
        } = &err
        else {
            panic!("{missing}: {err}")
        };
        assert_eq!(tensor, &victim.name);
        assert_eq!(
            (*start, *end),
            (victim.offset, victim.offset + victim.n_bytes)
        );
        assert_eq!(*file_size, keep);
        let text = err.to_string();
        assert!(text.contains(&victim.name), "{text}");
        assert!(
            text.contains(&format!("{} bytes missing", end - keep)),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[test]
fn a_tensor_offset_mismatch_is_named() {
    let mut bytes = good();
    let table = GgufFile::open(model(Arch::Qwen3Moe)).unwrap();
    let second = &table.tensors()[1];
    let offset_at = type_field(&bytes, &second.name) + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (_, err) = load("offset-oob.gguf", &bytes);
    assert!(
        matches!(
            &err,
            LoadError::TensorOffsetMismatch { tensor, offset, expected, .. }
                if *tensor == second.name
                    && *offset == 1 << 40
                    && *expected == second.offset - table.data_offset()
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_tensor_type_is_named() {
    let mut bytes = good();
    let name = "token_embd.weight";
    let at = type_field(&bytes, name);
    bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let (_, err) = load("unknown-type.gguf", &bytes);
    assert!(
        matches!(&err, LoadError::UnknownTensorType { tensor, type_id: 99, .. } if tensor == name),
        "{err}"
    );
}

#[test]
fn a_truncated_header_is_an_invalid_gguf_error() {
    let bytes = good();
    let (_, err) = load("header-cut.gguf", &bytes[..40]);
    assert!(matches!(err, LoadError::InvalidGguf(_)), "{err}");
    assert!(err.to_string().contains("header-cut.gguf"), "{err}");
}

/// A file our reader accepts but llama.cpp refuses keeps llama.cpp's own message.
#[test]
fn what_our_check_accepts_keeps_llama_cpps_message() {
    let mut bytes = good();
    let at = after_string(&bytes, "general.architecture") + 4 + 8;
    assert_eq!(&bytes[at..at + 8], b"qwen3moe");
    bytes[at..at + 8].copy_from_slice(b"qwen3mox");
    let (_, err) = load("unknown-arch.gguf", &bytes);
    let LoadError::Failed { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        reason.contains("unknown model architecture: 'qwen3mox'"),
        "{reason}"
    );
}

/// Files our reader accepts but llama.cpp's loader asserts on (found by fuzzing, kept in
/// fuzz/known-crashes/): a typed error instead of an aborted process.
#[test]
fn metadata_llama_cpp_would_abort_on_is_a_typed_error() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/known-crashes/model_load");
    for (file, needle) in [
        ("vocab-duplicate-token", "with the same text"),
        ("vocab-tokens-equal-up-to-nul", "with the same text"),
        ("expert-used-count-zero", "routes each token to none"),
        ("expert-used-count-above-expert-count", "experts of only"),
    ] {
        let path = dir.join(file);
        let err = Model::load(
            &backend(),
            &path,
            &ModelParams::default().with_n_gpu_layers(0),
        )
        .expect_err("llama.cpp would abort on this file");
        match &err {
            LoadError::InvalidModel { path: p, reason } => {
                assert_eq!(p, &path);
                assert!(reason.contains(needle), "{file}: {reason}");
            }
            other => panic!("{file}: expected InvalidModel, got {other:?}"),
        }
        assert!(err.to_string().contains("would abort"), "{err}");
    }
}

/// Layer and expert counts outside what llama.cpp's `load_hparams` asserts on
/// (`GGML_ASSERT`, an abort without our check): each a typed error naming the key.
/// Fuzzing found `expert_used_count` above `expert_count`; the others share its block.
#[test]
fn counts_llama_cpp_would_abort_on_are_typed_errors() {
    let file = GgufFile::open(model(Arch::Qwen3Moe)).unwrap();
    let n_expert = file.expert_count().unwrap();
    for (key, value, needle) in [
        (
            "qwen3moe.expert_used_count",
            n_expert + 1,
            "experts of only",
        ),
        ("qwen3moe.expert_used_count", 0, "routes each token to none"),
        ("qwen3moe.expert_count", 2000, "more than llama.cpp's 1024"),
        ("qwen3moe.block_count", 0, "supports 1 to 512 layers"),
        ("qwen3moe.block_count", 513, "supports 1 to 512 layers"),
    ] {
        let mut bytes = good();
        // A u32 entry: the key, its type (4 bytes), then the value.
        let at = after_string(&bytes, key);
        assert_eq!(
            u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
            4,
            "{key}"
        );
        let value = u32::try_from(value).unwrap();
        bytes[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
        let (_, err) = load(&format!("{key}-{value}.gguf"), &bytes);
        match &err {
            LoadError::InvalidModel { reason, .. } => {
                assert!(reason.contains(needle), "{key}={value}: {reason}");
            }
            other => panic!("{key}={value}: expected InvalidModel, got {other:?}"),
        }
    }
}

/// kv overrides reach the same asserts as the file's values: llama.cpp's `get_key`
/// applies them before `load_hparams` asserts (an `Int` stored into the `uint32_t`
/// field, so -1 becomes 4294967295), also for keys the file lacks. Each is refused with
/// a typed error that names the override, instead of `GGML_ASSERT` aborting the process.
#[test]
fn kv_overrides_llama_cpp_would_abort_on_are_typed_errors() {
    let path = model(Arch::Qwen3Moe);
    let n_expert = GgufFile::open(&path).unwrap().expert_count().unwrap() as i64;
    for (key, value, needle) in [
        ("qwen3moe.expert_used_count", 0, "routes each token to none"),
        (
            "qwen3moe.expert_used_count",
            n_expert + 1,
            "experts of only",
        ),
        ("qwen3moe.block_count", 0, "supports 1 to 512 layers"),
        ("qwen3moe.block_count", -1, "block_count is 4294967295"),
        ("qwen3moe.expert_count", 2000, "more than llama.cpp's 1024"),
        // Not in the file: the override alone sets it.
        (
            "qwen3moe.expert_group_count",
            n_expert,
            "expert groups for only",
        ),
    ] {
        let params = ModelParams::default()
            .with_n_gpu_layers(0)
            .with_kv_override(key, KvValue::Int(value));
        let err = Model::load(&backend(), &path, &params)
            .expect_err("llama.cpp would abort with this override");
        match &err {
            LoadError::InvalidModel { reason, .. } => {
                assert!(reason.contains(needle), "{key}={value}: {reason}");
                assert!(
                    reason.contains(&format!("kv override {key}=int:{value}")),
                    "{key}={value}: the reason does not name the override: {reason}"
                );
            }
            other => panic!("{key}={value}: expected InvalidModel, got {other:?}"),
        }
    }
}

/// Overrides llama.cpp does not apply do not refuse a load: one of another type (it
/// warns and keeps the file's value), and a repeated key (the first one wins).
#[test]
fn kv_overrides_llama_cpp_does_not_apply_are_not_refused() {
    let path = model(Arch::Qwen3Moe);
    let ignored_type =
        ModelParams::default().with_kv_override("qwen3moe.expert_used_count", KvValue::Float(0.0));
    Model::load(&backend(), &path, &ignored_type).expect("a float override of a count is ignored");
    let first_wins = ModelParams::default()
        .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(1))
        .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(0));
    let model = Model::load(&backend(), &path, &first_wins).expect("the first override wins");
    assert_eq!(model.n_expert_used(), 1);
    let last_bad = ModelParams::default()
        .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(0))
        .with_kv_override("qwen3moe.expert_used_count", KvValue::Int(1));
    assert!(matches!(
        Model::load(&backend(), &path, &last_bad),
        Err(LoadError::InvalidModel { .. })
    ));
}

/// The tiny qwen3moe rewritten with `expert_used_count` as a per-layer `int32` array.
fn with_used_count_array(name: &str, per_layer: impl Fn(u32) -> i32) -> PathBuf {
    use llama_cpp_moe_gguf::{GgufWriter, MetaArray, MetaValue, TensorDesc};
    let src = model(Arch::Qwen3Moe);
    let file = GgufFile::open(&src).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let n_layer = file.block_count().unwrap() as u32;
    let mut w = GgufWriter::new();
    // The writer adds general.alignment itself.
    for (key, value) in file
        .metadata()
        .iter()
        .filter(|(k, _)| k != "general.alignment")
    {
        let value = if key == "qwen3moe.expert_used_count" {
            MetaValue::Array(MetaArray::I32((0..n_layer).map(&per_layer).collect()))
        } else {
            value.clone()
        };
        w.add_kv(key, value).unwrap();
    }
    for t in file.tensors() {
        w.add_tensor(TensorDesc {
            name: t.name.clone(),
            ty: t.ty,
            shape: t.shape.clone(),
        })
        .unwrap();
    }
    let mut out = Vec::new();
    w.write(&mut out, |i, _, sink| {
        let t = &file.tensors()[i];
        sink.write_all(&bytes[t.offset as usize..(t.offset + t.n_bytes) as usize])
    })
    .unwrap();
    let path = temp_dir().join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// llama.cpp copies an `int32` per-layer array into its `uint32_t` slots, so one
/// negative entry is a used count of about four billion, above the expert count: an
/// abort the mirror used to miss by reading negatives as 0.
#[test]
fn a_negative_per_layer_used_count_is_a_typed_error() {
    let good = with_used_count_array("used-array-good.gguf", |_| 2);
    Model::load(&backend(), &good, &ModelParams::default()).expect("a valid per-layer array");
    let bad = with_used_count_array("used-array-negative.gguf", |l| if l == 1 { -1 } else { 2 });
    match Model::load(&backend(), &bad, &ModelParams::default()) {
        Err(LoadError::InvalidModel { reason, .. }) => {
            assert!(reason.contains("routed to 4294967295 experts"), "{reason}")
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}
