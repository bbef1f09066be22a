//! Structured output with llguidance (feature `llguidance`) on a synthetic model: its
//! random logits would write anything, so every output that parses and fits the schema
//! is the constraint's doing.
#![cfg(feature = "llguidance")]

mod ctx_support;

use ctx_support::{moe, small_ctx};
use llama_cpp_moe::sampler::llguidance::Llguidance;
use llama_cpp_moe::sampler::SamplerError;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{GenerateParams, SamplerBuilder};

const SCHEMA: &str = r#"{
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "pick": {"enum": ["red", "green"]}
    },
    "required": ["n", "pick"],
    "additionalProperties": false,
    "x-guidance": {"whitespace_flexible": false}
}"#;

#[test]
fn a_json_schema_constrains_a_random_model() {
    let model = moe();
    let vocab = model.vocab();
    let llg = Llguidance::new(&vocab).unwrap();
    for seed in 0..4 {
        let constraint = llg.json_schema(SCHEMA).unwrap();
        let mut sampler = SamplerBuilder::new()
            .with_custom(move || constraint.clone())
            .with_temp(1.5)
            .dist(&vocab, seed)
            .unwrap();
        let mut ctx = small_ctx(model);
        let prompt = vocab
            .tokenize("Answer:", AddSpecial::Yes, ParseSpecial::No)
            .unwrap();
        let params = GenerateParams::default().with_max_tokens(100);
        let out = ctx.complete(&mut sampler, &prompt, params).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out.text)
            .unwrap_or_else(|e| panic!("seed {seed}: {:?} is not JSON: {e}", out.text));
        let n = v["n"].as_u64().unwrap_or_else(|| panic!("{v}"));
        assert!(n <= 99, "{v}");
        assert!(v["pick"] == "red" || v["pick"] == "green", "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    }
}

#[test]
fn schemas_llguidance_rejects_are_typed_errors() {
    let llg = Llguidance::new(&moe().vocab()).unwrap();
    for bad in [r#"{"type": "no-such-type"}"#, "[1, 2]", r#"{"type": 7}"#] {
        let err = llg.json_schema(bad).unwrap_err();
        assert!(
            matches!(err, SamplerError::Llguidance { .. }),
            "{bad}: {err:?}"
        );
    }
}
