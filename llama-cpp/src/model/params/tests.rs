//! Unit tests of the builders and the raw conversion, without a model.

use super::*;

fn cpu() -> sys::ggml_backend_buffer_type_t {
    // SAFETY: ggml's static CPU buffer type.
    unsafe { sys::ggml_backend_cpu_buffer_type() }
}

#[test]
fn cpu_moe_2_is_layers_0_and_1_then_the_terminator() {
    let backend = Backend::init();
    let params = ModelParams::default().with_cpu_moe(2);
    let raw = params.to_raw(&backend).unwrap();
    assert_eq!(
        raw.read_overrides(),
        vec![
            (
                r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps".to_owned(),
                cpu()
            ),
            (
                r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps".to_owned(),
                cpu()
            ),
        ]
    );
}

#[test]
fn cpu_moe_all_is_one_entry() {
    let backend = Backend::init();
    let params = ModelParams::default().with_cpu_moe_all();
    let raw = params.to_raw(&backend).unwrap();
    assert_eq!(
        raw.read_overrides(),
        vec![(EXPERTS_REGEX.to_owned(), cpu())]
    );
}

#[test]
fn no_overrides_means_a_null_array() {
    let backend = Backend::init();
    let params = ModelParams::default();
    let raw = params.to_raw(&backend).unwrap();
    assert!(raw.raw.tensor_buft_overrides.is_null());
    assert!(raw.raw.kv_overrides.is_null());
    assert!(raw.raw.devices.is_null());
    assert!(raw.raw.tensor_split.is_null());
}

#[test]
fn explicit_overrides_come_first_in_call_order() {
    let backend = Backend::init();
    let params = ModelParams::default()
        .with_cpu_moe(1)
        .with_tensor_override("first", "CPU")
        .with_cpu_ffn(1)
        .with_tensor_override("second", OverrideTarget::Cpu)
        .with_cpu_moe_all();
    let raw = params.to_raw(&backend).unwrap();
    let patterns: Vec<String> = raw.read_overrides().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        patterns,
        vec![
            "first".to_owned(),
            "second".to_owned(),
            expert_layer_pattern(0),
            dense_ffn_layer_pattern(0),
            EXPERTS_REGEX.to_owned(),
        ]
    );
    let accessor: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    assert_eq!(accessor, patterns);
}

#[test]
fn layer_lists_keep_order_and_drop_duplicates() {
    let params = ModelParams::default().with_cpu_moe_layers([5, 3, 5, 4]);
    let layers: Vec<OverrideKind> = params.tensor_overrides().map(|o| o.kind()).collect();
    assert_eq!(
        layers,
        [5, 3, 4].map(|l| OverrideKind::Experts { layer: Some(l) })
    );
    assert_eq!(params.max_override_layer(), Some(5));
    assert!(params.has_expert_overrides());
    assert!(!ModelParams::default()
        .with_cpu_ffn(3)
        .has_expert_overrides());
}

#[test]
fn the_raw_array_points_into_the_params_own_strings() {
    let backend = Backend::init();
    let params = ModelParams::default().with_tensor_override(r"blk\.7\.", "CPU");
    let raw = params.to_raw(&backend).unwrap();
    // SAFETY: the array has one entry before the terminator.
    let ptr = unsafe { (*raw.raw.tensor_buft_overrides).pattern };
    assert_eq!(ptr, params.explicit_overrides[0].pattern.as_ptr());
    // A clone owns its own copies.
    let clone = params.clone();
    assert_ne!(clone.explicit_overrides[0].pattern.as_ptr(), ptr);
}

#[test]
fn bad_patterns_are_typed_errors() {
    let backend = Backend::init();
    let err = ModelParams::default()
        .with_tensor_override("((", "CPU")
        .validate(&backend)
        .unwrap_err();
    assert!(matches!(err, ParamsError::InvalidPattern { ref pattern, .. } if pattern == "(("));
    let err = ModelParams::default()
        .with_tensor_override("a\0b", "CPU")
        .validate(&backend)
        .unwrap_err();
    assert_eq!(
        err,
        ParamsError::NulInPattern {
            pattern: "a\\0b".into()
        }
    );
}

#[test]
fn unknown_buffer_type_lists_the_available_ones() {
    let backend = Backend::init();
    let err = ModelParams::default()
        .with_tensor_override("x", "CUDA7")
        .validate(&backend)
        .unwrap_err();
    let ParamsError::UnknownBufferType { pattern, source: e } = err else {
        panic!("{err:?}")
    };
    assert_eq!(pattern, "x");
    assert_eq!(e.name, "CUDA7");
    assert!(e.available.iter().any(|n| n == "CPU"), "{:?}", e.available);
    assert!(e.to_string().contains("CPU"));
    // "CPU" itself resolves to ggml's CPU buffer type.
    let params = ModelParams::default().with_tensor_override("x", "CPU");
    assert_eq!(
        params.to_raw(&backend).unwrap().read_overrides()[0].1,
        cpu()
    );
}

#[test]
fn too_many_overrides_is_an_error_not_an_allocation_storm() {
    let backend = Backend::init();
    let max = max_tensor_overrides();
    let at_limit = ModelParams::default().with_cpu_moe(max as u32);
    assert!(at_limit.validate(&backend).is_ok());
    let over = at_limit.with_tensor_override("one more", "CPU");
    assert_eq!(
        over.validate(&backend),
        Err(ParamsError::TooManyOverrides {
            count: max + 1,
            max
        })
    );
    let huge = ModelParams::default().with_cpu_moe(u32::MAX);
    assert_eq!(huge.tensor_overrides().count(), max);
    assert!(matches!(
        huge.validate(&backend),
        Err(ParamsError::TooManyOverrides { .. })
    ));
}

#[test]
fn kv_overrides_are_copied_inline_and_terminated() {
    let backend = Backend::init();
    let params = ModelParams::default()
        .with_kv_override("a.int", KvValue::Int(-3))
        .with_kv_override("a.str", KvValue::Str("hello".into()));
    let raw = params.to_raw(&backend).unwrap();
    // SAFETY: two entries then an empty-key terminator, built in to_raw.
    unsafe {
        let p = raw.raw.kv_overrides;
        assert_eq!((*p).tag, sys::LLAMA_KV_OVERRIDE_TYPE_INT);
        assert_eq!((*p).__bindgen_anon_1.val_i64, -3);
        let key = std::ffi::CStr::from_ptr((*p.add(1)).key.as_ptr());
        assert_eq!(key.to_str().unwrap(), "a.str");
        let val = std::ffi::CStr::from_ptr((*p.add(1)).__bindgen_anon_1.val_str.as_ptr());
        assert_eq!(val.to_str().unwrap(), "hello");
        assert_eq!((*p.add(2)).key[0], 0);
    }
    let long = "k".repeat(128);
    assert!(matches!(
        ModelParams::default()
            .with_kv_override(long, KvValue::Bool(true))
            .validate(&backend),
        Err(ParamsError::InvalidKvOverride { .. })
    ));
}

#[test]
fn devices_and_tensor_split_are_terminated_and_padded() {
    let backend = Backend::init();
    let cpu_dev = backend.cpu_device().unwrap();
    let params = ModelParams::default()
        .with_devices([cpu_dev])
        .with_tensor_split([3.0, 1.0])
        .with_split_mode(SplitMode::Row)
        .with_load_mode(LoadMode::Read)
        .with_main_gpu(1);
    let raw = params.to_raw(&backend).unwrap();
    // SAFETY: one device then NULL; the split has llama_max_devices() entries.
    unsafe {
        assert_eq!(*raw.raw.devices, cpu_dev.as_ptr());
        assert!((*raw.raw.devices.add(1)).is_null());
        let split = std::slice::from_raw_parts(raw.raw.tensor_split, max_devices());
        assert_eq!(&split[..3], &[3.0, 1.0, 0.0]);
    }
    assert_eq!(raw.raw.split_mode, sys::LLAMA_SPLIT_MODE_ROW);
    assert_eq!(raw.raw.load_mode, sys::LLAMA_LOAD_MODE_NONE);
    assert_eq!(raw.raw.main_gpu, 1);
    let too_long = ModelParams::default().with_tensor_split(vec![1.0; max_devices() + 1]);
    assert!(matches!(
        too_long.validate(&backend),
        Err(ParamsError::TooManyDevices {
            what: "tensor_split",
            ..
        })
    ));
}

/// Every message in `err`'s source chain, `": "`-joined (what anyhow's `{:#}` prints).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// With several overrides, the error says which one named the unknown buffer type.
#[test]
fn an_unknown_buffer_type_names_the_override_that_asked_for_it() {
    let backend = Backend::init();
    let err = ModelParams::default()
        .with_tensor_override("ffn_up_exps", "CPU")
        .with_tensor_override("ffn_down_exps", "NoSuchGPU")
        .with_cpu_moe(1)
        .validate(&backend)
        .unwrap_err();
    let text = chain(&err);
    for fact in ["ffn_down_exps", "NoSuchGPU"] {
        assert_eq!(text.matches(fact).count(), 1, "{fact} once in: {text}");
    }
    assert!(!text.contains("ffn_up_exps"), "{text}");
    assert!(text.contains("CPU"), "the available names: {text}");
}
