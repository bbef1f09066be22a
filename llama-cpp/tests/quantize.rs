//! `quantize` on real llama.cpp: synthetic F16 models (dense and qwen3moe) and the real
//! SmolLM2 when `LLAMA_CPP_MOE_SMOLLM2` is set. The outputs are read back with our GGUF
//! reader and loaded and run by llama.cpp.

mod ctx_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ctx_support::greedy_tokens_with;
use llama_cpp_moe::model::KvValue;
use llama_cpp_moe::model::{is_routed_expert, LoadError};
use llama_cpp_moe::quantize::{quantize, Ftype, QuantizeError, QuantizeParams};
use llama_cpp_moe::{Backend, Error, GgmlType, ModelParams};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgufFile, MetaValue};

fn backend() -> Backend {
    if std::env::var_os("MODEL_TEST_LOG").is_none() {
        llama_cpp_moe::logging::set_silent(true);
    }
    Backend::init()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llama-cpp-moe-quant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)))
}

/// A tiny synthetic model of `arch` with F16 weight matrices (what llama-quantize is
/// usually given: a converter's F16 output).
fn f16_model(arch: Arch) -> PathBuf {
    let path = temp(&format!("{}-f16.gguf", arch.cli_name()));
    SynthSpec::new(arch, Preset::Tiny)
        .seed(7)
        .weight_type(GgmlType::F16)
        .write(&path)
        .expect("synthetic model");
    path
}

fn is_attention(name: &str) -> bool {
    name.contains(".attn_") && name.ends_with(".weight") && !name.contains("norm")
}

/// Bytes of the routed-expert tensors, and what they take in `ty`.
fn expert_bytes(file: &GgufFile, ty: GgmlType) -> (u64, u64) {
    file.tensors()
        .iter()
        .filter(|t| is_routed_expert(&t.name))
        .map(|t| {
            (
                t.ty.tensor_bytes(&t.shape).unwrap(),
                ty.tensor_bytes(&t.shape).unwrap(),
            )
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

#[test]
fn experts_get_their_override_and_shrink_by_the_block_sizes() {
    let backend = backend();
    let input = f16_model(Arch::Qwen3Moe);
    let uniform = temp("q8.gguf");
    let mixed = temp("mix.gguf");
    let base = QuantizeParams::new(Ftype::Q8_0).with_threads(2);
    quantize(&backend, &input, &uniform, &base).expect("Q8_0");
    let mix = base
        .clone()
        .with_tensor_type(r"ffn_(up|gate|down)_exps", GgmlType::Q4_0)
        .with_output_tensor_type(GgmlType::from_name("q5_0").unwrap())
        .with_token_embedding_type(GgmlType::Q8_0);
    quantize(&backend, &input, &mixed, &mix).expect("mix");

    let uniform = GgufFile::open(&uniform).unwrap();
    let mixed_file = GgufFile::open(&mixed).unwrap();
    let mut n_experts = 0;
    let mut n_attention = 0;
    for t in mixed_file.tensors() {
        if is_routed_expert(&t.name) {
            n_experts += 1;
            assert_eq!(t.ty, GgmlType::Q4_0, "{}", t.name);
        } else if is_attention(&t.name) {
            n_attention += 1;
            assert_eq!(t.ty, GgmlType::Q8_0, "{}", t.name);
        }
    }
    assert!(
        n_experts > 0 && n_attention > 0,
        "{n_experts} {n_attention}"
    );
    assert_eq!(
        mixed_file.tensor("output.weight").unwrap().ty.name(),
        "q5_0"
    );
    assert_eq!(
        mixed_file.tensor("token_embd.weight").unwrap().ty,
        GgmlType::Q8_0
    );

    // Every expert tensor is exactly Q4_0's block size x element count, and against the
    // uniform Q8_0 file the experts shrink by 18/34 (bytes per 32-element block).
    let (q8_actual, q8_predicted) = expert_bytes(&uniform, GgmlType::Q8_0);
    let (q4_actual, q4_predicted) = expert_bytes(&mixed_file, GgmlType::Q4_0);
    assert_eq!(q8_actual, q8_predicted);
    assert_eq!(q4_actual, q4_predicted);
    assert_eq!(q4_actual * 34, q8_actual * 18);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&mixed) < size(uniform.path()),
        "{} !< {}",
        size(&mixed),
        size(uniform.path())
    );

    // llama.cpp loads the mix and generates from it.
    let tokens = greedy_tokens_with(&mixed, &ModelParams::default(), 4);
    assert_eq!(tokens.len(), 4);
}

#[test]
fn dense_model_takes_the_file_type_and_records_it() {
    let backend = backend();
    let input = f16_model(Arch::Llama);
    let out = temp("llama-q4_0.gguf");
    quantize(
        &backend,
        &input,
        &out,
        &QuantizeParams::new(Ftype::Q4_0).with_pure(true),
    )
    .expect("Q4_0");
    let file = GgufFile::open(&out).unwrap();
    let mats: Vec<_> = file
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2)
        .collect();
    assert!(!mats.is_empty());
    for t in mats {
        assert_eq!(t.ty, GgmlType::Q4_0, "{}", t.name);
    }
    let model = llama_cpp_moe::Model::load(&backend, &out, &ModelParams::default()).expect("loads");
    assert_eq!(model.file_type(), Ftype::Q4_0.file_type());
}

#[test]
fn bad_inputs_are_typed_errors_before_c() {
    let backend = backend();
    let input = f16_model(Arch::Llama);
    let q8 = QuantizeParams::new(Ftype::Q8_0);

    let missing = temp("missing.gguf");
    let err = quantize(&backend, &missing, temp("o.gguf"), &q8).unwrap_err();
    assert!(
        matches!(err, QuantizeError::Input(LoadError::NotFound(_))),
        "{err:?}"
    );

    let nowhere = temp("no-such-dir").join("out.gguf");
    let err = quantize(&backend, &input, &nowhere, &q8).unwrap_err();
    assert!(matches!(err, QuantizeError::Output { .. }), "{err:?}");

    let err = quantize(&backend, &input, &input, &q8).unwrap_err();
    assert!(matches!(err, QuantizeError::OutputIsInput(_)), "{err:?}");

    let q8_1 = GgmlType::from_name("q8_1").unwrap();
    let err = quantize(
        &backend,
        &input,
        temp("o.gguf"),
        &q8.clone().with_tensor_type("attn", q8_1),
    )
    .unwrap_err();
    assert!(
        matches!(err, QuantizeError::UnsupportedType { .. }),
        "{err:?}"
    );

    // Through the crate error too.
    let err: Error = quantize(&backend, &missing, temp("o.gguf"), &q8)
        .unwrap_err()
        .into();
    assert!(matches!(err, Error::Quantize(_)));
}

#[test]
fn what_only_llama_cpp_can_judge_comes_back_as_failed_not_an_abort() {
    let backend = backend();
    let input = f16_model(Arch::Llama);
    // std::regex rejects it inside llama_model_quantize's try block.
    let err = quantize(
        &backend,
        &input,
        temp("o.gguf"),
        &QuantizeParams::new(Ftype::Q8_0).with_tensor_type("blk.(", GgmlType::Q4_0),
    )
    .unwrap_err();
    let QuantizeError::Failed { code, reason } = &err else {
        panic!("{err:?}")
    };
    assert_ne!(*code, 0);
    assert!(reason.is_some(), "llama.cpp logged why: {err:?}");
}

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
fn smollm2_requantizes_only_when_allowed() {
    let Some(input) = smollm2() else { return };
    let backend = backend();
    let out = temp("smollm2-q8.gguf");
    let params = QuantizeParams::new(Ftype::Q8_0)
        .with_pure(true)
        .with_threads(2);
    let err = quantize(&backend, &input, &out, &params).unwrap_err();
    let QuantizeError::Failed { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.as_deref().unwrap_or("").contains("requantiz"),
        "{err:?}"
    );

    quantize(&backend, &input, &out, &params.with_allow_requantize(true)).expect("requantize");
    let file = GgufFile::open(&out).unwrap();
    let q4_1 = GgmlType::from_name("q4_1").unwrap();
    let src = GgufFile::open(&input).unwrap();
    let requantized = src.tensors().iter().filter(|t| t.ty == q4_1).count();
    assert!(requantized > 0);
    for t in src.tensors().iter().filter(|t| t.ty == q4_1) {
        assert_eq!(
            file.tensor(&t.name).unwrap().ty,
            GgmlType::Q8_0,
            "{}",
            t.name
        );
    }
    let tokens = greedy_tokens_with(&out, &ModelParams::default(), 4);
    assert_eq!(tokens.len(), 4);
}

#[test]
fn metadata_overrides_pruned_layers_and_dry_run_reach_llama_cpp() {
    let backend = backend();
    let input = f16_model(Arch::Llama);
    let out = temp("llama-pruned.gguf");
    let params = QuantizeParams::new(Ftype::Q8_0)
        .with_kv_override("general.name", KvValue::Str("quantized-by-test".into()))
        .with_pruned_layer(0);
    quantize(&backend, &input, &out, &params).expect("prune");
    let file = GgufFile::open(&out).unwrap();
    assert!(
        matches!(file.get("general.name"), Some(MetaValue::String(s)) if s == "quantized-by-test"),
        "{:?}",
        file.get("general.name")
    );
    assert_eq!(
        file.get("llama.block_count").and_then(MetaValue::as_u64),
        Some(1)
    );
    assert!(file.tensors().iter().all(|t| !t.name.starts_with("blk.1.")));
    assert!(file.tensor("blk.0.attn_q.weight").is_some());
    let tokens = greedy_tokens_with(&out, &ModelParams::default(), 2);
    assert_eq!(tokens.len(), 2);

    // A dry run writes nothing.
    let dry = temp("dry.gguf");
    quantize(
        &backend,
        &input,
        &dry,
        &QuantizeParams::new(Ftype::Q4_0).with_dry_run(true),
    )
    .expect("dry run");
    assert!(!dry.exists());
}
