//! Tensor overrides that move nothing are reported (one warning naming the pattern and
//! the tensors it may have meant), and every override's tensors and bytes are exposed
//! on the model, equal to the GGUF tensor table's.

mod model_support;

use llama_cpp_moe::model::{regex_search, OverrideKind};
use llama_cpp_moe::{Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use llama_cpp_moe_gguf::GgufFile;
use model_support::{backend, model, warnings_of};

#[test]
fn a_pattern_that_matches_nothing_warns_once_with_near_misses() {
    let backend = backend();
    let path = model(Arch::Qwen3Moe);
    let params = ModelParams::default()
        .with_tensor_override("nomatch", "CPU")
        .with_tensor_override(r"blk\.1\.ffn_upp_exps", "CPU");
    let (m, warnings) = warnings_of(|| Model::load(&backend, &path, &params).expect("loads"));
    println!("{warnings:#?}");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("\"nomatch\""), "{warnings:?}");
    assert!(
        warnings[1].contains(r#""blk\\.1\\.ffn_upp_exps""#),
        "{warnings:?}"
    );
    // The typo's first suggestion is the tensor it was meant to hit.
    assert!(
        warnings[1].contains("closest tensor names: blk.1.ffn_up_exps.weight"),
        "{warnings:?}"
    );
    let report = m.override_report();
    assert_eq!(report.overrides.len(), 2);
    assert_eq!(report.unused().count(), 2);
    assert!(report.overrides.iter().all(|o| o.bytes == 0));
}

#[test]
fn each_override_reports_the_tensors_and_bytes_of_the_gguf_table() {
    let backend = backend();
    for arch in [Arch::Qwen3Moe, Arch::GptOss, Arch::DeepSeek] {
        let path = model(arch);
        let gguf = GgufFile::open(&path).unwrap();
        let explicit = r"blk\.1\.ffn_(up|down)_exps";
        let params = ModelParams::default()
            .with_tensor_override(explicit, "CPU")
            .with_cpu_moe_all();
        let (m, warnings) = warnings_of(|| Model::load(&backend, &path, &params).expect("loads"));
        assert!(warnings.is_empty(), "{arch}: {warnings:?}");
        let report = m.override_report();
        assert_eq!(report.overrides.len(), 2, "{arch}");
        assert_eq!(report.unused().count(), 0, "{arch}");
        // The explicit override wins for the tensors it matches (first match), the
        // --cpu-moe one gets the rest of the experts.
        let first = &report.overrides[0];
        assert_eq!(first.kind, OverrideKind::Explicit);
        let expected: Vec<_> = gguf
            .tensors()
            .iter()
            .filter(|t| regex_search(explicit, &t.name).unwrap())
            .collect();
        assert!(!expected.is_empty(), "{arch}");
        let mut names: Vec<_> = expected.iter().map(|t| t.name.clone()).collect();
        let mut got = first.tensors.clone();
        names.sort();
        got.sort();
        assert_eq!(got, names, "{arch}");
        let bytes: u64 = expected.iter().map(|t| t.n_bytes).sum();
        assert_eq!(first.bytes as u64, bytes, "{arch}");
        let rest = &report.overrides[1];
        assert_eq!(rest.kind, OverrideKind::Experts { layer: None });
        let experts: u64 = gguf
            .tensors()
            .iter()
            .filter(|t| llama_cpp_moe::model::is_routed_expert(&t.name))
            .map(|t| t.n_bytes)
            .sum();
        assert_eq!(rest.bytes as u64 + bytes, experts, "{arch}");
        // Both went to host memory, in a CPU buffer type.
        for o in &report.overrides {
            assert!(
                o.buffer_types.keys().all(|b| b.starts_with("CPU")),
                "{arch}: {:?}",
                o.buffer_types
            );
        }
    }
}
