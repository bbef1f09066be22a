//! One error type for applications, over the specific error of each operation.

use std::path::PathBuf;

use crate::adapter::AdapterError;
use crate::backend::{NoCpuDevice, UnknownBufferType};
use crate::batch::BatchError;
use crate::context::{ContextError, DecodeError, MemoryError, OutputError, StateError};
use crate::generate::GenerateError;
use crate::model::{DryRunError, LoadError, ParamsError, SplitPathError};
use crate::quantize::QuantizeError;
#[cfg(feature = "rpc")]
use crate::rpc::{RpcError, RpcServeError};
use crate::sampler::{SampleError, SamplerError};
use crate::vocab::{ChatTemplateError, VocabError};

/// Any error this crate returns, so an application can use `?` across model, context,
/// vocabulary and sampler calls in one function.
///
/// Every operation still returns its own specific error (a [`LoadError`], a
/// [`DecodeError`], ...), which `?` converts into the matching variant here; match on
/// the variant to get it back. The variants are transparent: this level adds no text
/// of its own, so the message and [`std::error::Error::source`] are the specific
/// error's, and a cause chain (anyhow's `{:#}`, [`ErrorChain`]) states each fact once.
/// Below the specific error, `source()` leads to the causes it wraps (a
/// [`DryRunError`]'s [`LoadError`], an [`std::io::Error`]), which downcast as usual.
///
/// An error's own message (`{}`) may leave its cause to `source()` ("dry run", then
/// the load error): print errors with [`ErrorChain`] (or anyhow's `{:#}`) to show
/// every cause.
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
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Model parameters were rejected before loading.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A buffer-type name matched no device.
    #[error(transparent)]
    UnknownBufferType(#[from] UnknownBufferType),
    /// ggml has no CPU device (its module did not load).
    #[error(transparent)]
    NoCpuDevice(#[from] NoCpuDevice),
    /// A path cannot be handed to C.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A split model's file name could not be made.
    #[error(transparent)]
    SplitPath(#[from] SplitPathError),
    /// A context could not be created.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A batch could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The context has no such output (logits, embeddings).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A KV-cache (memory) operation failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A context or sequence state could not be saved or restored.
    #[error(transparent)]
    State(#[from] StateError),
    /// A LoRA adapter or control vector could not be loaded or applied.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// A batch could not be built.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// Tokenization or detokenization failed.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// A chat could not be formatted.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// A sampler chain could not be built.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// Sampling a token failed.
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A dry run (memory measurement without allocating) failed.
    #[error(transparent)]
    DryRun(#[from] DryRunError),
    /// A routing profile could not be read, written or merged.
    #[error(transparent)]
    Routing(#[from] crate::routing::RoutingError),
    /// A memory plan could not be made.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// A model could not be quantized.
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    /// An RPC server could not be added as a device.
    #[cfg(feature = "rpc")]
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// An RPC server could not be started.
    #[cfg(feature = "rpc")]
    #[error(transparent)]
    RpcServe(#[from] RpcServeError),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Displays an error and every cause under it, joined by `": "`, the way anyhow's
/// `{:#}` does: `plan: dry run: model file not found: m.gguf`.
///
/// Each error in this crate says only its own part and leaves the rest to
/// [`std::error::Error::source`], so printing an error with `{}` alone can leave out
/// why it happened; print it through this instead.
///
/// ```
/// use llama_cpp_moe::{ErrorChain, Model, ModelParams, Backend};
///
/// let err = Model::load(&Backend::init(), "missing.gguf", &ModelParams::default())
///     .unwrap_err();
/// assert_eq!(ErrorChain(&err).to_string(), "model file not found: missing.gguf");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

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

    /// The message of each error in `err`'s source chain, outermost first: the parts
    /// anyhow's `{:#}` joins with ": ".
    fn levels(err: &dyn std::error::Error) -> Vec<String> {
        let mut levels = vec![err.to_string()];
        let mut cause = err.source();
        while let Some(e) = cause {
            levels.push(e.to_string());
            cause = e.source();
        }
        levels
    }

    /// Each level says only its own part: none repeats a message from below it.
    fn assert_each_part_once(err: &dyn std::error::Error) {
        let levels = levels(err);
        for (i, outer) in levels.iter().enumerate() {
            assert!(!outer.is_empty(), "{levels:?}");
            for inner in &levels[i + 1..] {
                assert!(
                    !outer.contains(inner.as_str()),
                    "{outer:?} repeats {inner:?}"
                );
            }
        }
    }

    /// Converts `specific` the way `?` does; the variant is transparent: the same
    /// message and the same source as the specific error.
    fn convert<E: std::error::Error + Into<Error>>(specific: E) -> Error {
        let message = specific.to_string();
        let cause = specific.source().map(ToString::to_string);
        let err: Error = specific.into();
        assert_eq!(err.to_string(), message);
        assert_eq!(err.source().map(ToString::to_string), cause);
        assert_each_part_once(&err);
        err
    }

    #[test]
    fn every_specific_error_converts_into_its_own_variant() {
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
            convert(LoadError::NotFound("m.gguf".into())),
            Error::Load(LoadError::NotFound(_))
        ));
        assert!(matches!(
            convert(ParamsError::TooManyOverrides { count: 9, max: 8 }),
            Error::Params(ParamsError::TooManyOverrides { .. })
        ));
        assert!(matches!(
            convert(ContextError::InvalidParams("n_batch".into())),
            Error::Context(ContextError::InvalidParams(_))
        ));
        assert!(matches!(
            convert(DecodeError::EmptyBatch),
            Error::Decode(DecodeError::EmptyBatch)
        ));
        assert!(matches!(
            convert(SamplerError::GrammarNul),
            Error::Sampler(SamplerError::GrammarNul)
        ));
        assert!(matches!(
            convert(SampleError::TokenOutOfRange(Token(-1))),
            Error::Sample(SampleError::TokenOutOfRange(_))
        ));
        assert!(matches!(
            convert(GenerateError::EmptyPrompt),
            Error::Generate(GenerateError::EmptyPrompt)
        ));
        #[cfg(feature = "rpc")]
        {
            assert!(matches!(
                convert(RpcError::BadEndpoint("nowhere".into())),
                Error::Rpc(RpcError::BadEndpoint(_))
            ));
            assert!(matches!(
                convert(RpcServeError::InvalidHost("nowhere".into())),
                Error::RpcServe(RpcServeError::InvalidHost(_))
            ));
        }
    }

    /// A plan whose dry run could not read the file: the plan, the dry run, the read
    /// and the OS error, each stated once, and every level below the crate `Error`
    /// reachable through `source()` and downcast.
    #[test]
    fn a_nested_error_states_every_fact_once() {
        let io = std::io::Error::other("disk on fire");
        let gguf = llama_cpp_moe_gguf::GgufError::Io {
            path: "m.gguf".into(),
            source: io,
        };
        let err = Error::from(crate::plan::PlanError::DryRun(DryRunError::Load(
            LoadError::InvalidGguf(gguf),
        )));
        assert_each_part_once(&err);
        assert_eq!(
            ErrorChain(&err).to_string(),
            "plan: dry run: reading m.gguf: disk on fire"
        );
        assert_eq!(levels(&err).len(), 4, "{:?}", levels(&err));
        assert!(matches!(
            &err,
            Error::Plan(crate::plan::PlanError::DryRun(DryRunError::Load(_)))
        ));
        let dry_run = err.source().expect("the dry run error");
        assert!(dry_run.is::<DryRunError>(), "{dry_run:?}");
        // LoadError::InvalidGguf is transparent: the GGUF error's message and source.
        let load = dry_run.source().expect("the load error");
        assert!(load.is::<LoadError>(), "{load:?}");
        let os = load.source().expect("the OS error");
        assert!(os.is::<std::io::Error>(), "{os:?}");
    }

    /// Every other wrapper with a cause: its own words, then the cause's.
    #[test]
    fn wrappers_say_only_their_own_part() {
        let unknown = UnknownBufferType {
            name: "NPU0".into(),
            available: vec!["CPU".into()],
        };
        let params = Error::from(LoadError::InvalidParams(ParamsError::UnknownBufferType {
            pattern: "exps".into(),
            source: unknown,
        }));
        assert_each_part_once(&params);
        assert_eq!(
            ErrorChain(&params).to_string(),
            "tensor override \"exps\": unknown buffer type \"NPU0\"; available: CPU"
        );
        let context = Error::from(DryRunError::Context {
            path: "m.gguf".into(),
            source: ContextError::InvalidParams("n_batch 0".into()),
        });
        assert_each_part_once(&context);
        assert_eq!(
            ErrorChain(&context).to_string(),
            "dry run of m.gguf: the context could not be sized: invalid context parameters: n_batch 0"
        );
        #[cfg(feature = "rpc")]
        {
            let unreachable = Error::from(RpcError::Unreachable {
                endpoint: "127.0.0.1:1".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            });
            assert_each_part_once(&unreachable);
            let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            assert_eq!(
                ErrorChain(&unreachable).to_string(),
                format!("RPC server 127.0.0.1:1 is unreachable: {refused}")
            );
        }
    }
}
