//! Generation helpers: a streaming token iterator and a one-call completion, both with
//! measured statistics.

use std::time::{Duration, Instant};

use crate::batch::{Batch, BatchError, Output, Pos, SeqId};
use crate::context::{Context, DecodeError, MemoryError};
use crate::sampler::{SampleError, Sampler};
use crate::vocab::{RenderSpecial, Token, Utf8Decoder, VocabError};

/// Why generation stopped with an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The prompt has no token and there is nothing to continue: the sequence's last
    /// token in memory was not the last output of the context's last decode.
    #[error("empty prompt, and the sequence has no decoded last token to continue from")]
    EmptyPrompt,
    /// The prompt does not fit in the sequence's context.
    #[error("prompt of {prompt} tokens from position {start} does not fit the context of {n_ctx} tokens")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// First position of the prompt.
        start: Pos,
        /// Context length per sequence.
        n_ctx: u32,
    },
    /// A decode failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// A token could not be turned into text.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// The batch could not be built.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The sequence could not be queried.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The model produced an end-of-generation token (not counted, not in the text).
    EndOfGeneration(Token),
    /// [`GenerateParams::with_max_tokens`] tokens were generated.
    MaxTokens,
    /// The sequence reached the context length: the next token had no room in memory,
    /// so it was not yielded.
    ContextFull,
}

/// How to generate.
///
/// ```
/// use llama_cpp_moe::GenerateParams;
///
/// use llama_cpp_moe::SeqId;
///
/// let params = GenerateParams::default().with_max_tokens(64).with_seq(SeqId(0));
/// assert_eq!(params.max_tokens(), 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct GenerateParams {
    max_tokens: usize,
    seq: SeqId,
    stop_at_eog: bool,
    render_special: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            seq: SeqId(0),
            stop_at_eog: true,
            render_special: false,
        }
    }
}

impl GenerateParams {
    /// Most tokens to generate (default 128). C equivalent: `-n N`.
    pub fn with_max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// The sequence to extend (default 0). Generation continues after the sequence's
    /// last position in memory, so a second call continues the same conversation.
    pub fn with_seq(mut self, seq: SeqId) -> Self {
        self.seq = seq;
        self
    }

    /// Stop at an end-of-generation token (default true). C equivalent: `--ignore-eos`
    /// sets it to false.
    pub fn with_stop_at_eog(mut self, stop: bool) -> Self {
        self.stop_at_eog = stop;
        self
    }

    /// Render special/control tokens as their text (default false).
    pub fn with_render_special(mut self, render: bool) -> Self {
        self.render_special = render;
        self
    }

    /// Most tokens to generate.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The sequence extended.
    pub fn seq(&self) -> SeqId {
        self.seq
    }
}

/// When a token was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenTiming {
    /// Since the generation started (prefill included).
    pub since_start: Duration,
    /// Since the previous token (for the first token: since the start, i.e. the TTFT).
    pub step: Duration,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GeneratedToken {
    /// The token id.
    pub token: Token,
    /// The text this token completes: whole characters only, so it is empty when the
    /// token ends inside a multi-byte character, whose text then comes with a later token.
    pub text: String,
    /// When it was produced.
    pub timing: TokenTiming,
}

/// Measured statistics of one generation. Counts are the real numbers of tokens
/// processed and produced, never estimates.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct GenerationStats {
    /// How long llama.cpp took to load the model, if it measured it.
    pub load_time: Option<Duration>,
    /// Prompt tokens decoded.
    pub prompt_tokens: usize,
    /// Time spent decoding the prompt.
    pub prefill_time: Duration,
    /// Time to first token: from the start to the first sampled token (prefill
    /// included); `None` when no token was produced.
    pub ttft: Option<Duration>,
    /// Tokens produced (an end-of-generation token is not counted).
    pub generated_tokens: usize,
    /// Time from the first produced token to the last one: the decode phase.
    pub decode_time: Duration,
    /// Why the generation ended; `None` while it runs.
    pub stop_reason: Option<StopReason>,
}

fn rate(n: usize, t: Duration) -> Option<f64> {
    (n > 0 && !t.is_zero()).then(|| n as f64 / t.as_secs_f64())
}

impl GenerationStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> Option<f64> {
        rate(self.prompt_tokens, self.prefill_time)
    }

    /// Tokens per second of the decode phase: the tokens produced after the first one,
    /// divided by [`GenerationStats::decode_time`].
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        rate(self.generated_tokens.saturating_sub(1), self.decode_time)
    }
}

/// What [`Context::complete`] returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The generated tokens.
    pub tokens: Vec<Token>,
    /// Measured statistics.
    pub stats: GenerationStats,
}

enum State {
    Start(Vec<Token>),
    /// The last yielded token is in memory at `pos - 1`; its logits are output 0 of the
    /// last decode.
    Running {
        pos: Pos,
    },
    Done,
}

/// A streaming generation: an iterator of [`GeneratedToken`]s; see
/// [`Context::generate`].
///
/// The prompt is decoded on the first call to `next`. Each token is decoded into the
/// context's memory before it is yielded, so whenever the caller stops, the memory holds
/// the prompt and every token the caller saw, and the last decode holds the logits that
/// follow them: a later generation on the same sequence continues exactly where this
/// one stopped (with an empty prompt, or with new prompt tokens). Likewise the sampler
/// accepts exactly the tokens yielded: an end-of-generation token, or a token that found
/// no room in the context, leaves its penalty history and grammar state untouched.
pub struct Generation<'a, 'm> {
    ctx: &'a mut Context<'m>,
    sampler: &'a mut Sampler<'m>,
    params: GenerateParams,
    state: State,
    batch: Batch,
    decoder: Utf8Decoder,
    start: Option<Instant>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    stats: GenerationStats,
}

impl std::fmt::Debug for Generation<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("params", &self.params)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'m> Context<'m> {
    /// Streams tokens generated after `prompt` in sequence `params.seq()`.
    ///
    /// The prompt continues the sequence after its last position in memory. An empty
    /// prompt continues a previous generation of the sequence from its last token (see
    /// [`Generation`]); otherwise it is [`GenerateError::EmptyPrompt`].
    ///
    /// ```no_run
    /// use llama_cpp_moe::{Backend, Context, ContextParams, GenerateParams, Model, ModelParams, SamplerBuilder};
    /// use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let mut ctx = Context::new(&model, &ContextParams::default())?;
    /// let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
    /// let prompt = model.vocab().tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
    /// let mut stream = ctx.generate(&mut sampler, &prompt, GenerateParams::default());
    /// for tok in &mut stream {
    ///     print!("{}", tok?.text);
    /// }
    /// print!("{}", stream.flush());
    /// println!("\n{:?}", stream.stats());
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate<'a>(
        &'a mut self,
        sampler: &'a mut Sampler<'m>,
        prompt: &[Token],
        params: GenerateParams,
    ) -> Generation<'a, 'm> {
        let load_time = self.model_load_time();
        Generation {
            ctx: self,
            sampler,
            params,
            state: State::Start(prompt.to_vec()),
            batch: Batch::new(),
            decoder: Utf8Decoder::new(),
            start: None,
            first_token_at: None,
            last_token_at: None,
            stats: GenerationStats {
                load_time,
                ..GenerationStats::default()
            },
        }
    }

    /// Generates after `prompt` until a stop condition and returns the text with
    /// statistics.
    ///
    /// ```no_run
    /// use llama_cpp_moe::{Backend, Context, ContextParams, GenerateParams, Model, ModelParams, SamplerBuilder};
    /// use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let mut ctx = Context::new(&model, &ContextParams::default())?;
    /// let mut sampler = SamplerBuilder::new().with_temp(0.7).dist(&model.vocab(), 1)?;
    /// let prompt = model.vocab().tokenize("Hello", AddSpecial::Yes, ParseSpecial::No)?;
    /// let out = ctx.complete(&mut sampler, &prompt, GenerateParams::default().with_max_tokens(32))?;
    /// println!("{} ({:?} tok/s)", out.text, out.stats.decode_tokens_per_second());
    /// # Ok(())
    /// # }
    /// ```
    pub fn complete(
        &mut self,
        sampler: &mut Sampler<'m>,
        prompt: &[Token],
        params: GenerateParams,
    ) -> Result<Completion, GenerateError> {
        let mut gen = self.generate(sampler, prompt, params);
        let mut text = String::new();
        let mut tokens = Vec::new();
        for item in &mut gen {
            let item = item?;
            text.push_str(&item.text);
            tokens.push(item.token);
        }
        text.push_str(&gen.flush());
        Ok(Completion {
            text,
            tokens,
            stats: gen.stats().clone(),
        })
    }
}

impl Generation<'_, '_> {
    /// Statistics so far (final once the iterator returned `None`).
    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// Text held back because the last token ended inside a multi-byte character; call
    /// once the iterator is exhausted (incomplete bytes become U+FFFD).
    pub fn flush(&mut self) -> String {
        self.decoder.finish()
    }

    fn stop(&mut self, reason: StopReason) -> Option<Result<GeneratedToken, GenerateError>> {
        self.state = State::Done;
        self.stats.stop_reason = Some(reason);
        None
    }

    /// Decodes the prompt; returns the batch index whose logits give the first token,
    /// and the position of that token.
    fn prefill(&mut self, prompt: &[Token]) -> Result<(usize, Pos), GenerateError> {
        let seq = self.params.seq;
        let last = self.ctx.seq_pos_max(seq)?;
        if prompt.is_empty() {
            let pos_max = last.ok_or(GenerateError::EmptyPrompt)?;
            let index = self
                .ctx
                .continuation_index(seq, pos_max)
                .ok_or(GenerateError::EmptyPrompt)?;
            return Ok((index, pos_max + 1));
        }
        let start = last.map_or(Pos(0), |p| p + 1);
        let n_ctx = self.ctx.n_ctx_seq();
        if start.0 as usize + prompt.len() > n_ctx as usize {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                start,
                n_ctx,
            });
        }
        let chunk = self.ctx.n_batch().max(1) as usize;
        let t0 = Instant::now();
        let mut pos = start;
        for part in prompt.chunks(chunk) {
            self.batch.clear();
            for &t in part {
                self.batch.add(t, pos, &[seq], Output::No)?;
                pos += 1;
            }
            let last = self.batch.len() - 1;
            self.batch.set_output(last, Output::Yes);
            self.ctx.decode(&self.batch)?;
        }
        self.stats.prefill_time = t0.elapsed();
        self.stats.prompt_tokens = prompt.len();
        Ok((self.batch.len() - 1, pos))
    }

    /// Samples from output `index` of the last decode, decodes the token into memory at
    /// `pos` (so the caller never sees a token the memory lacks) and turns it into an
    /// item. The sampler accepts the token (penalty history, grammar) only once it is in
    /// memory: a token that ends the generation, or finds no room, or fails to decode,
    /// leaves the sampler as it was, ready to continue the sequence.
    fn produce(&mut self, index: usize, pos: Pos) -> Option<Result<GeneratedToken, GenerateError>> {
        let token = match self.sampler.select(self.ctx, index) {
            Ok(t) => t,
            Err(e) => return self.fail(e.into()),
        };
        let vocab = self.ctx.vocab();
        if self.params.stop_at_eog && vocab.is_eog(token) {
            return self.stop(StopReason::EndOfGeneration(token));
        }
        if pos.0 as usize >= self.ctx.n_ctx_seq() as usize {
            return self.stop(StopReason::ContextFull);
        }
        let bytes =
            match vocab.token_to_bytes(token, RenderSpecial::from(self.params.render_special)) {
                Ok(b) => b,
                Err(e) => return self.fail(e.into()),
            };
        // Timed at sampling: the decode that feeds the token computes the next token's
        // logits, which belong to the next step.
        let now = Instant::now();
        self.batch.clear();
        if let Err(e) = self.batch.add(token, pos, &[self.params.seq], Output::Yes) {
            return self.fail(e.into());
        }
        if let Err(e) = self.ctx.decode(&self.batch) {
            return self.fail(e.into());
        }
        if let Err(e) = self.sampler.accept_selected(token) {
            return self.fail(e.into());
        }
        let start = *self.start.get_or_insert(now);
        let prev = self.last_token_at.unwrap_or(start);
        let first = *self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        self.stats.ttft = Some(first - start);
        self.stats.decode_time = now - first;
        self.stats.generated_tokens += 1;
        self.state = State::Running { pos: pos + 1 };
        Some(Ok(GeneratedToken {
            token,
            text: self.decoder.push(&bytes),
            timing: TokenTiming {
                since_start: now - start,
                step: now - prev,
            },
        }))
    }

    fn fail(&mut self, e: GenerateError) -> Option<Result<GeneratedToken, GenerateError>> {
        self.state = State::Done;
        Some(Err(e))
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<GeneratedToken, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::Start(prompt) => {
                if self.params.max_tokens == 0 {
                    return self.stop(StopReason::MaxTokens);
                }
                self.start = Some(Instant::now());
                match self.prefill(&prompt) {
                    Ok((index, pos)) => self.produce(index, pos),
                    Err(e) => self.fail(e),
                }
            }
            State::Running { pos } => {
                if self.stats.generated_tokens >= self.params.max_tokens {
                    return self.stop(StopReason::MaxTokens);
                }
                self.produce(0, pos)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_real_counts_and_skip_empty_phases() {
        let stats = GenerationStats {
            prompt_tokens: 10,
            prefill_time: Duration::from_millis(500),
            generated_tokens: 5,
            decode_time: Duration::from_secs(2),
            ..GenerationStats::default()
        };
        assert_eq!(stats.prefill_tokens_per_second(), Some(20.0));
        // Four tokens came after the first one, in two seconds.
        assert_eq!(stats.decode_tokens_per_second(), Some(2.0));
        let one = GenerationStats {
            generated_tokens: 1,
            ..GenerationStats::default()
        };
        assert_eq!(one.decode_tokens_per_second(), None);
        assert_eq!(one.prefill_tokens_per_second(), None);
    }
}
