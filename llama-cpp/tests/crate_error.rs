//! The crate-wide `Error`: `?` works across model, context, vocabulary, batch, decode
//! and sampler calls in one function, and each failure arrives as its own variant with
//! the specific error's message and the specific error as its source.

mod ctx_support;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ctx_support::{small_params, write_tiny};
use llama_cpp_moe::batch::BatchError;
use llama_cpp_moe::context::{ContextError, DecodeError, OutputError};
use llama_cpp_moe::model::LoadError;
use llama_cpp_moe::sampler::{SampleError, SamplerError};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial, VocabError};
use llama_cpp_moe::{
    Backend, Batch, Context, Error, Model, ModelParams, Pos, SamplerBuilder, SeqId, Token,
};
use llama_cpp_moe_gguf::synth::Arch;

/// Where [`first_token`] goes wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    MissingFile,
    ZeroBatchSize,
    TokenOutOfVocab,
    NegativePosition,
    TokenOutOfVocabInBatch,
    TopPAboveOne,
    SampleWithoutLogits,
}

fn tiny_model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| write_tiny(Arch::Qwen3Moe))
}

/// What an application writes: every call's own error converts with `?`.
fn first_token(fault: Fault) -> llama_cpp_moe::Result<Token> {
    let path = match fault {
        Fault::MissingFile => tiny_model_path().with_extension("missing"),
        _ => tiny_model_path().to_owned(),
    };
    let model = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
    )?;
    let ctx_params = match fault {
        Fault::ZeroBatchSize => small_params().with_n_batch(0),
        _ => small_params(),
    };
    let mut ctx = Context::new(&model, &ctx_params)?;
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
    if fault == Fault::TokenOutOfVocab {
        vocab.detokenize(&[Token(-1)], RemoveSpecial::No, RenderSpecial::No)?;
    }
    if fault == Fault::TokenOutOfVocabInBatch {
        tokens.push(Token(vocab.n_tokens() as i32));
    }
    let start = Pos(if fault == Fault::NegativePosition {
        -1
    } else {
        0
    });
    ctx.decode(&Batch::from_tokens(&tokens, start, SeqId(0))?)?;
    let chain = match fault {
        Fault::TopPAboveOne => SamplerBuilder::new().with_top_p(1.5, 1),
        _ => SamplerBuilder::new(),
    };
    let mut sampler = chain.greedy(&vocab)?;
    // Only the last token of a batch from `from_tokens` has logits.
    let index = match fault {
        Fault::SampleWithoutLogits => 0,
        _ => tokens.len() - 1,
    };
    Ok(sampler.sample(&ctx, index)?)
}

/// The message is the specific error's and `source()` is the specific error itself.
fn assert_wraps<E: std::error::Error + 'static>(err: &Error) {
    let source = err.source().expect("a source");
    let specific = source
        .downcast_ref::<E>()
        .unwrap_or_else(|| panic!("source of {err:?} is not a {}", std::any::type_name::<E>()));
    assert_eq!(err.to_string(), specific.to_string());
}

#[test]
fn question_mark_works_across_every_step() {
    let token = first_token(Fault::None).expect("the happy path");
    let model = Model::load(
        &Backend::init(),
        tiny_model_path(),
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .unwrap();
    assert!(model.vocab().contains(token), "{token}");
}

#[test]
fn each_failing_step_arrives_as_its_own_variant() {
    let err = first_token(Fault::MissingFile).unwrap_err();
    assert!(
        matches!(err, Error::Load(LoadError::NotFound(_))),
        "{err:?}"
    );
    assert_wraps::<LoadError>(&err);

    let err = first_token(Fault::ZeroBatchSize).unwrap_err();
    assert!(
        matches!(err, Error::Context(ContextError::InvalidParams(_))),
        "{err:?}"
    );
    assert_wraps::<ContextError>(&err);

    let err = first_token(Fault::TokenOutOfVocab).unwrap_err();
    assert!(
        matches!(err, Error::Vocab(VocabError::TokenOutOfRange { .. })),
        "{err:?}"
    );
    assert_wraps::<VocabError>(&err);

    let err = first_token(Fault::NegativePosition).unwrap_err();
    assert!(
        matches!(err, Error::Batch(BatchError::NegativePos(Pos(-1)))),
        "{err:?}"
    );
    assert_wraps::<BatchError>(&err);

    let err = first_token(Fault::TokenOutOfVocabInBatch).unwrap_err();
    assert!(
        matches!(err, Error::Decode(DecodeError::TokenOutOfRange { .. })),
        "{err:?}"
    );
    assert_wraps::<DecodeError>(&err);

    let err = first_token(Fault::TopPAboveOne).unwrap_err();
    assert!(
        matches!(err, Error::Sampler(SamplerError::InvalidParam { .. })),
        "{err:?}"
    );
    assert_wraps::<SamplerError>(&err);

    let err = first_token(Fault::SampleWithoutLogits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sample(SampleError::Output(OutputError::NotAnOutput { index: 0 }))
        ),
        "{err:?}"
    );
    assert_wraps::<SampleError>(&err);
}
