//! Decoding batches and reading their outputs (logits, embeddings).

use llama_cpp_moe_sys as sys;

use super::{Context, PoolingType};
use crate::batch::{Batch, SeqId};
use crate::vocab::Token;

/// Why [`Context::decode`] failed.
///
/// Batch problems are caught in Rust before llama.cpp sees the batch (it would assert on
/// some of them); the rest carry llama.cpp's return code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The batch holds no token.
    #[error("empty batch")]
    EmptyBatch,
    /// More tokens than the context's batch size (`n_batch`, or `n_ubatch` for
    /// non-causal attention).
    #[error("batch of {n_tokens} tokens exceeds the context's limit of {limit}")]
    TooManyTokens {
        /// Tokens in the batch.
        n_tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// A token id is not in the model's vocabulary.
    #[error("batch token {index} is {token}, outside the vocabulary of {n_vocab} tokens")]
    TokenOutOfRange {
        /// Batch index.
        index: usize,
        /// The token.
        token: Token,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// A sequence id is not below the context's `n_seq_max`.
    #[error("sequence id {seq} out of range (context holds {n_seq_max} sequences)")]
    InvalidSeqId {
        /// The offending id.
        seq: SeqId,
        /// The context's sequence count.
        n_seq_max: u32,
    },
    /// llama_decode returned 1: no room in the KV cache for the batch. Use a smaller
    /// batch, free sequences, or a larger context. The memory is unchanged.
    #[error("no KV cache slot for the batch (llama_decode returned 1)")]
    NoKvSlot,
    /// llama_decode returned 2: the abort callback stopped it. Micro-batches processed
    /// before the abort stay in memory; check [`Context::seq_pos_max`].
    #[error("decode aborted by the abort callback (llama_decode returned 2)")]
    Aborted,
    /// llama_decode returned -1: llama.cpp rejected the batch (for example positions
    /// that do not continue the sequence).
    #[error("llama.cpp rejected the batch (llama_decode returned -1): {reason}")]
    InvalidBatch {
        /// llama.cpp's error line.
        reason: String,
    },
    /// Any other return code: a fatal error (compute or allocation failure).
    #[error("llama_decode failed with code {code}: {reason}")]
    Failed {
        /// The return code.
        code: i32,
        /// llama.cpp's error line.
        reason: String,
    },
}

/// Why logits or embeddings could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// Batch index `index` did not ask for output in the last successful decode (or
    /// there was no successful decode since the last change).
    #[error("batch index {index} has no output from the last decode")]
    NotAnOutput {
        /// The batch index asked for.
        index: usize,
    },
    /// The context produced no such output (embeddings off, or pooled embeddings
    /// asked per token, or per-token ones asked per sequence).
    #[error("the context has no {0} for this request")]
    Unavailable(&'static str),
}

impl Context<'_> {
    /// Runs the model on `batch`, adding its tokens to the KV cache.
    ///
    /// The batch is checked in Rust first (size, token ids, sequence ids), so bad input
    /// is a typed error and never reaches a llama.cpp assertion.
    ///
    /// C equivalent: `llama_decode(ctx, batch)`.
    pub fn decode(&mut self, batch: &Batch) -> Result<(), DecodeError> {
        self.forget_outputs();
        self.validate(batch)?;
        let mut raw = batch.to_raw();
        // A decode may reserve graphs again, which reads the model's adapter set.
        let _adapters = crate::adapter::reading_adapters();
        crate::logging::clear_last_error();
        // SAFETY: valid context; the raw batch points into `batch` and `raw`, both alive
        // for the call; every token and sequence id was checked above and the length is
        // within n_batch, so llama.cpp's assertions hold.
        let ret = unsafe { sys::llama_decode(self.ptr.as_ptr(), raw.raw()) };
        let reason = crate::logging::take_last_error();
        self.resume_abort_panic();
        let reason = || reason.clone().unwrap_or_else(|| "no error logged".into());
        match ret {
            0 => {
                // Settle llama.cpp's lazy output reordering now, under &mut self, so the
                // slices handed out later by &self methods never see the buffer move.
                // SAFETY: valid context pointer.
                unsafe {
                    sys::llama_synchronize(self.ptr.as_ptr());
                    sys::llama_get_logits(self.ptr.as_ptr());
                }
                // With embeddings on, llama.cpp outputs every token whatever the batch's
                // flags say (llama_batch_allocr::init, `output_all`), so its rows are the
                // batch indices themselves.
                let all = self.embeddings;
                self.outputs = (0..batch.len())
                    .map(|i| all || batch.is_output(i))
                    .collect();
                let last = batch.len() - 1;
                self.tail_output = match batch.seq_ids(last) {
                    Some(&[seq]) if self.outputs[last] => Some((seq, batch.positions()[last])),
                    _ => None,
                };
                Ok(())
            }
            1 => Err(DecodeError::NoKvSlot),
            2 => Err(DecodeError::Aborted),
            -1 => Err(DecodeError::InvalidBatch { reason: reason() }),
            code => Err(DecodeError::Failed {
                code,
                reason: reason(),
            }),
        }
    }

    fn validate(&self, batch: &Batch) -> Result<(), DecodeError> {
        if batch.is_empty() {
            return Err(DecodeError::EmptyBatch);
        }
        let n_batch = self.n_batch() as usize;
        if batch.len() > n_batch {
            return Err(DecodeError::TooManyTokens {
                n_tokens: batch.len(),
                limit: n_batch,
            });
        }
        // SAFETY: valid context pointer.
        let causal = unsafe { sys::llama_get_causal_attn(self.ptr.as_ptr()) };
        let n_ubatch = self.n_ubatch() as usize;
        if !causal && batch.len() > n_ubatch {
            return Err(DecodeError::TooManyTokens {
                n_tokens: batch.len(),
                limit: n_ubatch,
            });
        }
        let vocab = self.vocab();
        if let Some((index, &token)) = batch
            .tokens()
            .iter()
            .enumerate()
            .find(|(_, &t)| !vocab.contains(t))
        {
            return Err(DecodeError::TokenOutOfRange {
                index,
                token,
                n_vocab: vocab.n_tokens(),
            });
        }
        let n_seq_max = self.n_seq_max();
        if let Some(seq) = batch.max_seq_id().filter(|s| s.0 as u32 >= n_seq_max) {
            return Err(DecodeError::InvalidSeqId { seq, n_seq_max });
        }
        Ok(())
    }

    /// Checks that batch index `index` produced output in the last decode, so that
    /// llama.cpp's `_ith` getters (which abort in debug builds on any other index) find
    /// its row; returns the index as C takes it.
    fn output_index(&self, index: usize) -> Result<i32, OutputError> {
        if !self.outputs.get(index).copied().unwrap_or(false) {
            return Err(OutputError::NotAnOutput { index });
        }
        // Batches hold at most i32::MAX tokens (BatchError::TooLarge).
        Ok(index as i32)
    }

    /// Batch indices that produced output in the last successful decode: those the batch
    /// flagged, or every index when the context extracts embeddings (llama.cpp then
    /// outputs every token).
    pub fn output_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(_, &o)| o)
            .map(|(i, _)| i)
    }

    /// The logits (one per vocabulary token) of batch index `index` of the last decode.
    ///
    /// The slice borrows the context, so the next decode cannot overwrite it while it is
    /// in use:
    ///
    /// ```compile_fail,E0502
    /// # use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams, Pos, SeqId, Token};
    /// # let model = Model::load(&Backend::init(), "m.gguf", &ModelParams::default()).unwrap();
    /// # let mut ctx = Context::new(&model, &ContextParams::default()).unwrap();
    /// # let batch = Batch::from_tokens(&[Token(1)], Pos(0), SeqId(0)).unwrap();
    /// let logits = ctx.logits(0).unwrap();
    /// ctx.decode(&batch).unwrap(); // error[E0502]: `ctx` is also borrowed as immutable
    /// println!("{}", logits[0]);
    /// ```
    ///
    /// C equivalent: `llama_get_logits_ith(ctx, index)`.
    pub fn logits(&self, index: usize) -> Result<&[f32], OutputError> {
        let i = self.output_index(index)?;
        let n_vocab = self.vocab().n_tokens();
        // SAFETY: valid context; `i` produced output in the last decode, so llama.cpp maps
        // it to its row (NULL otherwise). Outputs were reordered and synchronised in
        // decode, so this call only reads.
        let row = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i) };
        if row.is_null() {
            return Err(OutputError::Unavailable("logits"));
        }
        // SAFETY: the row holds n_vocab floats; the buffer stays untouched until the next
        // &mut self call (decode, memory ops).
        Ok(unsafe { std::slice::from_raw_parts(row, n_vocab) })
    }

    /// The embedding of batch index `index` of the last decode (contexts created with
    /// embeddings on and no pooling).
    ///
    /// C equivalent: `llama_get_embeddings_ith(ctx, index)`.
    pub fn embeddings(&self, index: usize) -> Result<&[f32], OutputError> {
        if !self.embeddings || self.pooling_type() != PoolingType::None {
            return Err(OutputError::Unavailable("per-token embeddings"));
        }
        let i = self.output_index(index)?;
        // SAFETY: valid model pointer.
        let n_embd = unsafe { sys::llama_model_n_embd_out(self.model.as_ptr()) }.max(0) as usize;
        // SAFETY: valid context; `i` produced output in the last decode (embeddings on:
        // every token did), so llama.cpp maps it to its row. Outputs were reordered and
        // synchronised in decode, so this call only reads.
        let row = unsafe { sys::llama_get_embeddings_ith(self.ptr.as_ptr(), i) };
        if row.is_null() || n_embd == 0 {
            return Err(OutputError::Unavailable("per-token embeddings"));
        }
        // SAFETY: the row holds n_embd_out floats.
        Ok(unsafe { std::slice::from_raw_parts(row, n_embd) })
    }

    /// The pooled embedding of sequence `seq` from the last decode (contexts created with
    /// embeddings on and a pooling type other than `None`).
    ///
    /// C equivalent: `llama_get_embeddings_seq(ctx, seq)`.
    pub fn embeddings_seq(&self, seq: SeqId) -> Result<&[f32], OutputError> {
        let pooling = self.pooling_type();
        if !self.embeddings || pooling == PoolingType::None || self.outputs.is_empty() {
            return Err(OutputError::Unavailable("pooled embeddings"));
        }
        // SAFETY: valid context; a map lookup that returns NULL for unknown sequences.
        let p = unsafe { sys::llama_get_embeddings_seq(self.ptr.as_ptr(), seq.0) };
        let len = if pooling == PoolingType::Rank {
            // SAFETY: valid model pointer; reads the classifier width from hparams.
            (unsafe { sys::llama_model_n_cls_out(self.model.as_ptr()) }) as usize
        } else {
            // SAFETY: valid model pointer.
            (unsafe { sys::llama_model_n_embd_out(self.model.as_ptr()) }).max(0) as usize
        };
        if p.is_null() || len == 0 {
            return Err(OutputError::Unavailable("pooled embeddings"));
        }
        // SAFETY: llama.cpp stores `len` floats per pooled sequence.
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }
}
