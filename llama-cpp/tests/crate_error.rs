//! The crate-wide `Error`: `?` works across model, context, vocabulary, batch, decode
//! and sampler calls in one function, and each failure arrives as its own variant,
//! transparent over the specific error (its message and its source). A nested error's
//! cause chain, as anyhow's `{:#}` prints it, states every fact once.

mod ctx_support;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ctx_support::{small_params, write_tiny};
use llama_cpp_moe::batch::BatchError;
use llama_cpp_moe::context::{ContextError, DecodeError, OutputError};
use llama_cpp_moe::model::{DryRunError, LoadError};
use llama_cpp_moe::plan::{Plan, PlanError, Planner};
use llama_cpp_moe::sampler::{SampleError, SamplerError};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial, VocabError};
use llama_cpp_moe::{
    Backend, Batch, Context, Error, ErrorChain, Model, ModelParams, Pos, SamplerBuilder, SeqId,
    Token,
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

/// The variant adds nothing: the message and the source are the specific error's.
fn assert_wraps(err: &Error, specific: &dyn std::error::Error) {
    assert_eq!(err.to_string(), specific.to_string());
    assert_eq!(
        err.source().map(ToString::to_string),
        specific.source().map(ToString::to_string)
    );
}

/// Each message in `err`'s source chain, outermost first: the parts anyhow's `{:#}`
/// joins with ": ".
fn levels(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(err), |&e| e.source())
        .map(ToString::to_string)
        .collect()
}

/// The specific error inside `err`.
fn specific(err: &Error) -> &dyn std::error::Error {
    match err {
        Error::Load(e) => e,
        Error::Context(e) => e,
        Error::Vocab(e) => e,
        Error::Batch(e) => e,
        Error::Decode(e) => e,
        Error::Sampler(e) => e,
        Error::Sample(e) => e,
        other => panic!("not a variant first_token returns: {other:?}"),
    }
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
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::ZeroBatchSize).unwrap_err();
    assert!(
        matches!(err, Error::Context(ContextError::InvalidParams(_))),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::TokenOutOfVocab).unwrap_err();
    assert!(
        matches!(err, Error::Vocab(VocabError::TokenOutOfRange { .. })),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::NegativePosition).unwrap_err();
    assert!(
        matches!(err, Error::Batch(BatchError::NegativePos(Pos(-1)))),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::TokenOutOfVocabInBatch).unwrap_err();
    assert!(
        matches!(err, Error::Decode(DecodeError::TokenOutOfRange { .. })),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::TopPAboveOne).unwrap_err();
    assert!(
        matches!(err, Error::Sampler(SamplerError::InvalidParam { .. })),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));

    let err = first_token(Fault::SampleWithoutLogits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sample(SampleError::Output(OutputError::NotAnOutput { index: 0 }))
        ),
        "{err:?}"
    );
    assert_wraps(&err, specific(&err));
}

/// A plan on a path that is a directory: the plan, the dry run, the read of the file
/// and the OS error, each said once in the chain and reachable through `source()`.
#[test]
fn a_nested_error_states_every_fact_once() {
    let dir = tiny_model_path().with_extension("dir.gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let plan = |backend: &Backend| -> llama_cpp_moe::Result<Plan> {
        Ok(Planner::new(backend, &dir)
            .with_params(ModelParams::default().with_n_gpu_layers(0))
            .plan()?)
    };
    let err = plan(&Backend::init()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Plan(PlanError::DryRun(DryRunError::Load(
                LoadError::InvalidGguf(_)
            )))
        ),
        "{err:?}"
    );
    let levels = levels(&err);
    let os_error = levels.last().unwrap();
    assert_eq!(
        levels,
        [
            "plan".to_owned(),
            "dry run".to_owned(),
            format!("reading {}", dir.display()),
            os_error.clone(),
        ]
    );
    let chain = levels.join(": ");
    assert_eq!(ErrorChain(&err).to_string(), chain);
    assert_eq!(
        chain.matches(&dir.display().to_string()).count(),
        1,
        "{chain}"
    );
    assert_eq!(chain.matches(os_error.as_str()).count(), 1, "{chain}");
    assert_eq!(chain.matches("dry run").count(), 1, "{chain}");
    assert_eq!(chain.matches("plan").count(), 1, "{chain}");

    let dry_run = err.source().unwrap().downcast_ref::<DryRunError>();
    assert!(matches!(dry_run, Some(DryRunError::Load(_))), "{err:?}");
    let os = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |&e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<std::io::Error>());
    assert!(os.is_some(), "no io::Error in {chain}");
}
