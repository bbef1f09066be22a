//! Structured output with [llguidance](https://github.com/guidance-ai/llguidance) (cargo
//! feature `llguidance`): a JSON schema (or a Lark grammar) compiled against the model's
//! vocabulary, applied as a [`CustomSampler`] that masks every token the constraint
//! forbids, so the output always parses and validates.
//!
//! ```no_run
//! use llama_cpp_moe::sampler::llguidance::Llguidance;
//! use llama_cpp_moe::{Backend, Model, ModelParams, SamplerBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
//! let llg = Llguidance::new(&model.vocab())?; // once per model: it indexes the vocabulary
//! let schema = r#"{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}"#;
//! let constraint = llg.json_schema(schema)?;
//! let sampler = SamplerBuilder::new()
//!     .with_custom(move || constraint.clone())
//!     .with_temp(0.7)
//!     .dist(&model.vocab(), 42)?;
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use super::custom::{Candidates, CustomSampler};
use super::SamplerError;
use crate::vocab::{RenderSpecial, Token, Vocab};

/// What may stand between two JSON tokens of a schema-constrained reply (a regex in
/// llguidance's syntax): llama.cpp's schema grammars allow `"" | " " | "\n"{1,2} [ \t]{0,20}`.
const JSON_WHITESPACE: &str = r"[ \t]{1,20}|\n{1,2}[ \t]{0,20}";

/// llguidance's view of one model's vocabulary (the token trie and the mask slicer):
/// build it once per model and make a [`LlgConstraint`] from it per request.
#[derive(Clone)]
pub struct Llguidance {
    factory: Arc<ParserFactory>,
    /// Every end-of-generation token: each is allowed where llguidance allows its EOS.
    eog: Arc<[u32]>,
    eos: u32,
}

impl std::fmt::Debug for Llguidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llguidance")
            .field("n_tokens", &self.factory.tok_env().tok_trie().vocab_size())
            .finish()
    }
}

fn llg_error(reason: impl std::fmt::Display) -> SamplerError {
    SamplerError::Llguidance {
        reason: reason.to_string(),
    }
}

impl Llguidance {
    /// Indexes `vocab`: each token's bytes (control tokens under llguidance's special
    /// marker, so no text matches them). Fails for a vocabulary without an
    /// end-of-generation token (a constraint could never end).
    pub fn new(vocab: &Vocab<'_>) -> Result<Llguidance, SamplerError> {
        let n = vocab.n_tokens();
        let mut words = Vec::with_capacity(n);
        let mut eog = Vec::new();
        for id in 0..n as i32 {
            let t = Token(id);
            let plain = vocab
                .token_to_bytes(t, RenderSpecial::No)
                .unwrap_or_default();
            let word = if vocab.is_control(t) || plain.is_empty() {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend(
                    vocab
                        .token_to_bytes(t, RenderSpecial::Yes)
                        .unwrap_or_default(),
                );
                if w.len() == 1 {
                    w.extend(format!("<[{id}]>").bytes());
                }
                w
            } else {
                plain
            };
            words.push(word);
            if vocab.is_eog(t) {
                eog.push(id as u32);
            }
        }
        let eos = vocab
            .eot()
            .or(vocab.eos())
            .map(|t| t.0 as u32)
            .or(eog.first().copied())
            .ok_or_else(|| llg_error("the vocabulary has no end-of-generation token"))?;
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_end_of_turn = vocab.eot().map(|t| t.0 as u32);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(llg_error)?;
        factory.quiet();
        Ok(Llguidance {
            factory: Arc::new(factory),
            eog: eog.into(),
            eos,
        })
    }

    /// A constraint to JSON text valid under the JSON schema `schema` (JSON text);
    /// an error for a schema that is not JSON or that llguidance does not support.
    ///
    /// Whitespace between JSON tokens is bounded as in llama.cpp's schema grammars (one
    /// run of up to 20 spaces or tabs, or one or two newlines and up to 20 spaces or
    /// tabs): llguidance's default allows any amount, and a sampled reply could spend
    /// every token on it and never finish. A schema with its own `"x-guidance"` options
    /// keeps them.
    pub fn json_schema(&self, schema: &str) -> Result<LlgConstraint, SamplerError> {
        let trimmed = schema.trim_start();
        if !(trimmed.starts_with('{') || trimmed.starts_with("true")) {
            return Err(llg_error("a JSON schema must be an object or true"));
        }
        let mut value: serde_json::Value = serde_json::from_str(schema)
            .map_err(|e| llg_error(format!("the schema is not JSON: {e}")))?;
        if value == serde_json::Value::Bool(true) {
            value = serde_json::json!({});
        }
        if let Some(object) = value.as_object_mut() {
            object
                .entry("x-guidance")
                .or_insert_with(|| serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
        }
        self.grammar(TopLevelGrammar::from_lark(format!("start: %json {value}")))
    }

    /// A constraint to the Lark grammar `lark` (llguidance's syntax).
    pub fn lark(&self, lark: &str) -> Result<LlgConstraint, SamplerError> {
        self.grammar(TopLevelGrammar::from_lark(lark.to_owned()))
    }

    fn grammar(&self, grammar: TopLevelGrammar) -> Result<LlgConstraint, SamplerError> {
        let parser = self.factory.create_parser(grammar).map_err(llg_error)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(llg_error(e));
        }
        Ok(LlgConstraint {
            matcher: Arc::new(Mutex::new(matcher)),
            eog: self.eog.clone(),
            eos: self.eos,
        })
    }
}

/// One generation's constraint: a [`CustomSampler`] (add it with
/// [`SamplerBuilder::with_custom`](super::SamplerBuilder::with_custom), first in the
/// chain) that masks the tokens the constraint forbids and advances on each accepted
/// token; once the constraint is complete only end-of-generation tokens remain. A
/// clone is a fresh copy of the current state.
///
/// A token the constraint does not allow, passed to accept, is a
/// [`SampleError::Custom`](super::SampleError::Custom).
pub struct LlgConstraint {
    matcher: Arc<Mutex<Matcher>>,
    eog: Arc<[u32]>,
    eos: u32,
}

impl Clone for LlgConstraint {
    fn clone(&self) -> Self {
        let m = self.matcher.lock().unwrap_or_else(|e| e.into_inner());
        LlgConstraint {
            matcher: Arc::new(Mutex::new(m.deep_clone())),
            eog: self.eog.clone(),
            eos: self.eos,
        }
    }
}

impl std::fmt::Debug for LlgConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LlgConstraint")
    }
}

impl LlgConstraint {
    fn matcher(&self) -> std::sync::MutexGuard<'_, Matcher> {
        self.matcher.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CustomSampler for LlgConstraint {
    fn name(&self) -> String {
        "llguidance".into()
    }

    fn apply(&mut self, candidates: &mut Candidates<'_>) {
        let mask = match self.matcher().compute_mask_or_eos() {
            Ok(mask) => mask,
            // The chain turns this panic into SampleError::Custom.
            Err(e) => panic!("llguidance: {e}"),
        };
        let eog_ok = mask.is_allowed(self.eos);
        for c in candidates.as_mut_slice() {
            let id = c.id().0 as u32;
            let allowed = if self.eog.contains(&id) {
                eog_ok
            } else {
                mask.is_allowed(id)
            };
            if !allowed {
                c.set_logit(f32::NEG_INFINITY);
            }
        }
    }

    fn accept(&mut self, token: Token) {
        let id = token.0 as u32;
        let mut m = self.matcher();
        // An end-of-generation token ends the output: nothing to consume.
        if self.eog.contains(&id) || m.is_stopped() {
            return;
        }
        if let Err(e) = m.consume_token(id) {
            panic!("llguidance: {e}");
        }
    }

    fn reset(&mut self) {
        if let Err(e) = self.matcher().reset() {
            panic!("llguidance: {e}");
        }
    }

    fn clone_sampler(&self) -> Option<Box<dyn CustomSampler>> {
        Some(Box::new(self.clone()))
    }
}
