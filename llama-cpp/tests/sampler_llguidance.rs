//! Structured output with llguidance (feature `llguidance`) on a synthetic model: its
//! random logits would write anything, so every output that parses and fits the schema
//! is the constraint's doing.
#![cfg(feature = "llguidance")]

mod ctx_support;

use ctx_support::{moe, small_ctx};
use llama_cpp_moe::sampler::llguidance::Llguidance;
use llama_cpp_moe::sampler::SamplerError;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial, RenderSpecial};
use llama_cpp_moe::{GenerateParams, SamplerBuilder, Token};

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

/// What the synthetic model writes after "Answer:" under `schema`, sampled at
/// temperature 1.5 with `seed`, with `biases` applied before the constraint.
fn sampled_reply(
    llg: &Llguidance,
    schema: &str,
    biases: &[(Token, f32)],
    seed: u32,
    max_tokens: usize,
) -> String {
    let model = moe();
    let vocab = model.vocab();
    let constraint = llg.json_schema(schema).unwrap();
    let mut builder = SamplerBuilder::new();
    if !biases.is_empty() {
        builder = builder.with_logit_bias(biases.to_vec());
    }
    let mut sampler = builder
        .with_custom(move || constraint.clone())
        .with_temp(1.5)
        .dist(&vocab, seed)
        .unwrap();
    let mut ctx = small_ctx(model);
    let prompt = vocab
        .tokenize("Answer:", AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    let params = GenerateParams::default().with_max_tokens(max_tokens);
    ctx.complete(&mut sampler, &prompt, params).unwrap().text
}

#[test]
fn a_json_schema_constrains_a_random_model() {
    let llg = Llguidance::new(&moe().vocab()).unwrap();
    for seed in 0..4 {
        let text = sampled_reply(&llg, SCHEMA, &[], seed, 100);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("seed {seed}: {text:?} is not JSON: {e}"));
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

/// llguidance's default JSON whitespace is unbounded: a sampled reply could spend every
/// token between two JSON tokens and never finish (moe_server's json_schema replies ran
/// out of tokens in whitespace on SmolLM2). Schemas without their own `x-guidance` get
/// llama.cpp's bound: at most 2 newlines and 20 spaces or tabs in a row.
#[test]
fn json_whitespace_is_bounded_and_sampled_replies_finish() {
    let schema = SCHEMA.replace(
        ",\n    \"x-guidance\": {\"whitespace_flexible\": false}",
        "",
    );
    assert!(!schema.contains("x-guidance"), "{schema}");
    let model = moe();
    let vocab = model.vocab();
    let llg = Llguidance::new(&vocab).unwrap();
    // A model that likes whitespace: every all-whitespace token gets +8. Bounded, each
    // of the reply's dozen gaps costs at most 22 tokens, so 400 are enough to finish.
    let spaces: Vec<(Token, f32)> = (0..vocab.n_tokens() as i32)
        .map(Token)
        .filter(|&t| {
            vocab
                .token_to_piece(t, RenderSpecial::No)
                .is_ok_and(|p| !p.is_empty() && p.chars().all(char::is_whitespace))
        })
        .map(|t| (t, 8.0))
        .collect();
    assert!(!spaces.is_empty());
    for seed in 0..6 {
        let text = sampled_reply(&llg, &schema, &spaces, seed, 400);
        let longest_gap = text
            .split(|c: char| !c.is_whitespace())
            .map(|gap| gap.chars().count())
            .max()
            .unwrap_or(0);
        assert!(
            longest_gap <= 22,
            "seed {seed}: a whitespace run of {longest_gap} in {text:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("seed {seed}: {text:?} is not JSON: {e}"));
        assert!(v["pick"] == "red" || v["pick"] == "green", "{v}");
    }
}
