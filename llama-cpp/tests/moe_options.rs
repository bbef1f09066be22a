//! MoE options that cannot do what they say: invalid input is a typed error before
//! llama.cpp runs, and options that move nothing load normally with one warning.

mod model_support;

use llama_cpp_moe::model::{max_tensor_overrides, LoadError, ParamsError};
use llama_cpp_moe::{Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, model, warnings_of};

#[test]
fn moe_options_on_a_dense_model_load_and_warn_once() {
    let backend = backend();
    for params in [
        ModelParams::default().with_cpu_moe_all(),
        ModelParams::default().with_cpu_moe(2),
    ] {
        let ((), warnings) = warnings_of(|| {
            let m = Model::load(&backend, model(Arch::Llama), &params).expect("loads");
            assert_eq!(m.n_expert(), 0);
            assert_eq!(m.placement().experts_on_host().count, 0);
            assert_eq!(m.placement().routed_experts().count(), 0);
        });
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("no experts"), "{warnings:?}");
    }
    // Dense FFN offload on a dense model is not an MoE option: no warning.
    let ((), warnings) = warnings_of(|| {
        let params = ModelParams::default().with_cpu_ffn(1);
        Model::load(&backend, model(Arch::Llama), &params).expect("loads");
    });
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn layers_beyond_the_model_are_ignored_with_a_warning() {
    let backend = backend();
    let path = model(Arch::Qwen3Moe);
    let mut moved = Vec::new();
    let ((), warnings) = warnings_of(|| {
        for params in [
            ModelParams::default().with_cpu_moe(2),
            ModelParams::default().with_cpu_moe(50),
        ] {
            let m = Model::load(&backend, &path, &params).expect("loads");
            assert_eq!(m.n_layer(), 2);
            moved.push(m.placement().experts_on_host());
        }
    });
    assert_eq!(moved[0], moved[1], "n = 50 acts like n = n_layer = 2");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("49") && warnings[0].contains("2 layers"),
        "{warnings:?}"
    );
}

#[test]
fn invalid_params_are_typed_errors_and_llama_cpp_never_runs() {
    let backend = backend();
    let path = model(Arch::Qwen3Moe);
    let load = |params: ModelParams| Model::load(&backend, &path, &params).map(|_| ());

    let err = load(ModelParams::default().with_tensor_override("((", "CPU")).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::InvalidParams(ParamsError::InvalidPattern { .. })
        ),
        "{err}"
    );

    let err = load(ModelParams::default().with_tensor_override("a\0b", "CPU")).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::InvalidParams(ParamsError::NulInPattern { .. })
        ),
        "{err}"
    );

    let err = load(ModelParams::default().with_tensor_override("x", "Vulkan9")).unwrap_err();
    let LoadError::InvalidParams(ParamsError::UnknownBufferType { source: e, .. }) = &err else {
        panic!("{err}")
    };
    assert!(e.available.contains(&"CPU".to_owned()), "{err}");

    let max = max_tensor_overrides() as u32;
    let err = load(ModelParams::default().with_cpu_moe(max + 1)).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::InvalidParams(ParamsError::TooManyOverrides { .. })
        ),
        "{err}"
    );
}
