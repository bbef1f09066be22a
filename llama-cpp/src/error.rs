//! One error type for applications, over the specific error of each operation.

use std::path::PathBuf;

use crate::backend::{NoCpuDevice, UnknownBufferType};
use crate::batch::BatchError;
use crate::context::{ContextError, DecodeError, MemoryError, OutputError};
use crate::generate::GenerateError;
use crate::model::{DryRunError, LoadError, ParamsError};
#[cfg(feature = "rpc")]
use crate::rpc::{RpcError, RpcServeError};
use crate::sampler::{SampleError, SamplerError};
use crate::vocab::{ChatTemplateError, VocabError};

/// Any error this crate returns, so an application can use `?` across model, context,
/// vocabulary and sampler calls in one function.
///
/// Every operation still returns its own specific error (a [`LoadError`], a
/// [`DecodeError`], ...), which `?` converts into the matching variant here. The message
/// is the specific error's, unchanged, and [`std::error::Error::source`] returns the
/// specific error, so it can be matched on (the variant) or downcast (the source).
///
/// ```no_run
/// use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams};
/// use llama_cpp_moe::{AddSpecial, ParseSpecial, Pos, SamplerBuilder, SeqId, Token};
///
/// fn first_token(path: &str, prompt: &str) -> llama_cpp_moe::Result<Token> {
///     let model = Model::load(&Backend::init(), path, &ModelParams::default())?;
///     let mut ctx = Context::new(&model, &ContextParams::default())?;
///     let tokens = model.vocab().tokenize(prompt, AddSpecial::Yes, ParseSpecial::No)?;
///     ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0))?)?;
///     let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
///     Ok(sampler.sample(&ctx, tokens.len() - 1)?)
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model could not be loaded.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// Model parameters were rejected before loading.
    #[error("{0}")]
    Params(#[from] ParamsError),
    /// A buffer-type name matched no device.
    #[error("{0}")]
    UnknownBufferType(#[from] UnknownBufferType),
    /// ggml has no CPU device (its module did not load).
    #[error("{0}")]
    NoCpuDevice(#[from] NoCpuDevice),
    /// A path cannot be handed to C.
    #[error("{0}")]
    Path(#[from] PathError),
    /// A context could not be created.
    #[error("{0}")]
    Context(#[from] ContextError),
    /// A batch could not be decoded.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The context has no such output (logits, embeddings).
    #[error("{0}")]
    Output(#[from] OutputError),
    /// A KV-cache (memory) operation failed.
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// A batch could not be built.
    #[error("{0}")]
    Batch(#[from] BatchError),
    /// Tokenization or detokenization failed.
    #[error("{0}")]
    Vocab(#[from] VocabError),
    /// A chat could not be formatted.
    #[error("{0}")]
    ChatTemplate(#[from] ChatTemplateError),
    /// A sampler chain could not be built.
    #[error("{0}")]
    Sampler(#[from] SamplerError),
    /// Sampling a token failed.
    #[error("{0}")]
    Sample(#[from] SampleError),
    /// Generation failed.
    #[error("{0}")]
    Generate(#[from] GenerateError),
    /// A dry run (memory measurement without allocating) failed.
    #[error("{0}")]
    DryRun(#[from] DryRunError),
    /// A memory plan could not be made.
    #[error("{0}")]
    Plan(#[from] crate::plan::PlanError),
    /// An RPC server could not be added as a device.
    #[cfg(feature = "rpc")]
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// An RPC server could not be started.
    #[cfg(feature = "rpc")]
    #[error("{0}")]
    RpcServe(#[from] RpcServeError),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a path cannot be passed to llama.cpp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path contains a NUL byte, which a C string cannot hold.
    #[error("path {0:?} contains a NUL byte, which C cannot represent")]
    NulByte(PathBuf),
    /// The path is not valid Unicode; outside Unix llama.cpp takes paths as UTF-8.
    #[error("path {0:?} is not valid Unicode, which llama.cpp needs on this platform")]
    NotUnicode(PathBuf),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::vocab::Token;

    /// Converts `specific` the way `?` does and checks the message and the source.
    fn convert<E: std::error::Error + Clone + 'static>(specific: E) -> Error
    where
        Error: From<E>,
    {
        let message = specific.to_string();
        let err = Error::from(specific);
        assert_eq!(err.to_string(), message);
        let source = err.source().expect("the specific error is the source");
        assert_eq!(source.downcast_ref::<E>().map(E::to_string), Some(message));
        err
    }

    /// Converts `specific` the way `?` does; checks that the message is the source's.
    fn wrapped(specific: impl Into<Error>) -> Error {
        let err = specific.into();
        let source = err.source().expect("the specific error is the source");
        assert_eq!(err.to_string(), source.to_string());
        err
    }

    #[test]
    fn every_specific_error_converts_into_its_own_variant() {
        // Errors that are Clone go through `convert`, the others through `wrapped`.
        let unknown = UnknownBufferType {
            name: "NPU0".into(),
            available: vec!["CPU".into()],
        };
        assert!(matches!(convert(unknown.clone()), Error::UnknownBufferType(u) if u == unknown));
        let no_cpu = crate::backend::NoCpuDevice {
            registries: vec!["RPC".into()],
        };
        assert!(matches!(convert(no_cpu.clone()), Error::NoCpuDevice(n) if n == no_cpu));
        assert!(matches!(
            convert(PathError::NulByte("a\0b".into())),
            Error::Path(PathError::NulByte(_))
        ));
        assert!(matches!(
            convert(BatchError::NegativePos(crate::Pos(-1))),
            Error::Batch(BatchError::NegativePos(crate::Pos(-1)))
        ));
        assert!(matches!(
            convert(VocabError::TooLong(3)),
            Error::Vocab(VocabError::TooLong(3))
        ));
        assert!(matches!(
            convert(ChatTemplateError::NoTemplate),
            Error::ChatTemplate(ChatTemplateError::NoTemplate)
        ));
        assert!(matches!(
            convert(OutputError::NotAnOutput { index: 4 }),
            Error::Output(OutputError::NotAnOutput { index: 4 })
        ));
        assert!(matches!(
            convert(MemoryError::NoMemory),
            Error::Memory(MemoryError::NoMemory)
        ));

        assert!(matches!(
            wrapped(LoadError::NotFound("m.gguf".into())),
            Error::Load(LoadError::NotFound(_))
        ));
        assert!(matches!(
            wrapped(ParamsError::TooManyOverrides { count: 9, max: 8 }),
            Error::Params(ParamsError::TooManyOverrides { .. })
        ));
        assert!(matches!(
            wrapped(ContextError::InvalidParams("n_batch".into())),
            Error::Context(ContextError::InvalidParams(_))
        ));
        assert!(matches!(
            wrapped(DecodeError::EmptyBatch),
            Error::Decode(DecodeError::EmptyBatch)
        ));
        assert!(matches!(
            wrapped(SamplerError::GrammarNul),
            Error::Sampler(SamplerError::GrammarNul)
        ));
        assert!(matches!(
            wrapped(SampleError::TokenOutOfRange(Token(-1))),
            Error::Sample(SampleError::TokenOutOfRange(_))
        ));
        assert!(matches!(
            wrapped(GenerateError::EmptyPrompt),
            Error::Generate(GenerateError::EmptyPrompt)
        ));
        #[cfg(feature = "rpc")]
        {
            assert!(matches!(
                wrapped(RpcError::BadEndpoint("nowhere".into())),
                Error::Rpc(RpcError::BadEndpoint(_))
            ));
            assert!(matches!(
                wrapped(RpcServeError::InvalidHost("nowhere".into())),
                Error::RpcServe(RpcServeError::InvalidHost(_))
            ));
        }
    }
}
