//! The decoding engine: one worker thread owns the [`Context`] and decodes every active
//! request together, one sequence each, in one batch per step.
//!
//! Requests arrive over a bounded channel (the queue); the worker admits one whenever a
//! sequence is free. Each request gets its events back over its own channel; when the
//! HTTP side drops that channel (the client went away) the worker stops the generation
//! and frees the sequence's KV cells.
//!
//! A decode that fails fails only the request(s) that caused it, and the others are
//! decoded again (`Worker::recover`). A worker that dies (a panic) says so in
//! [`Load::stopped`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use llama_cpp_moe::context::DecodeError;
use llama_cpp_moe::sampler::llguidance::LlgConstraint;
pub use llama_cpp_moe::sampler::{Dry, Penalties, TempExt, Xtc};
use llama_cpp_moe::sampler::{Mirostat, MirostatV2, SamplerError};
use llama_cpp_moe::{
    Batch, Context, Output, Pos, RenderSpecial, Sampler, SamplerBuilder, SeqId, Token, Utf8Decoder,
    Vocab,
};
use tokio::sync::mpsc::UnboundedSender;

/// How to pick tokens, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    /// Repetition penalties (`None`: off); the prompt counts as history, as in
    /// llama-server.
    pub penalties: Option<Penalties>,
    /// `None`: a random seed. Choice `i` of a request uses `seed + i`.
    pub seed: Option<u32>,
    /// Added to the tokens' logits before any other stage (`-inf` forbids a token).
    pub logit_bias: Vec<(Token, f32)>,
    /// DRY repetition penalty (`None`: off).
    pub dry: Option<Dry>,
    /// Keep the tokens within this many standard deviations of the top logit.
    pub top_n_sigma: Option<f32>,
    /// Exclude-top-choices (`None`: off); its seed is the choice's.
    pub xtc: Option<Xtc>,
    /// Dynamic temperature: `(range, exponent)` around `temperature` (`None`: plain).
    pub dynatemp: Option<(f32, f32)>,
    /// Mirostat version (1 or 2) with `(tau, eta)`; it replaces the filtering stages,
    /// as in llama-server (`None`: off).
    pub mirostat: Option<(u8, f32, f32)>,
    /// A GBNF grammar (root rule `root`) every output must match.
    pub grammar: Option<String>,
    /// A JSON schema every output must validate against (llguidance).
    pub schema: Option<Schema>,
    /// `Some(k)`: report each sampled token's log-probability and the `k` most likely
    /// tokens' ([`Event::Logprob`]).
    pub logprobs: Option<usize>,
    /// With `logprobs`: also the prompt's tokens' (from its second on), given the
    /// tokens before them ([`Event::PromptLogprobs`]).
    pub prompt_logprobs: bool,
    /// Texts that end the generation (not included in the output).
    pub stop: Vec<String>,
    /// Go on past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

/// A compiled JSON-schema constraint, copied fresh into each choice's chain.
#[derive(Debug, Clone)]
pub struct Schema(pub Arc<LlgConstraint>);

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Why a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop text.
    Stop,
    /// `max_tokens` or the end of the sequence's context.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A token and its log-probability under the model's raw distribution (the log-softmax
/// of the logits, before any sampling stage), as llama-server reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenProb {
    pub token: Token,
    /// The token's text (special tokens rendered), possibly part of a UTF-8 character.
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A sampled token's log-probability, and the most likely tokens' at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    pub sampled: TokenProb,
    /// Most likely first.
    pub top: Vec<TokenProb>,
}

/// What the worker tells the request that submitted a job. `choice` is the index of the
/// choice (0 to `n - 1`) an event is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Generated text (never empty).
    Text { choice: usize, text: String },
    /// A sampled token's log-probabilities (with [`Sampling::logprobs`]); it comes before
    /// the text that holds the token.
    Logprob { choice: usize, logprob: Logprob },
    /// The end of a choice, with the real token counts.
    Done {
        choice: usize,
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The prompt's tokens' log-probabilities, from the second token on (with
    /// [`Sampling::prompt_logprobs`]), once the prompt is decoded; for the first choice
    /// only (the others share its prompt).
    PromptLogprobs { entries: Vec<Logprob> },
    /// An embedding job's pooled embedding, L2-normalised (the job's one event).
    Embedding(Vec<f32>),
    /// The generation failed (every choice of it); nothing more follows.
    Failed(String),
}

/// A request for the worker.
pub struct Job {
    /// The tokenized prompt (never empty; checked to fit the sequence's context).
    pub prompt: Vec<Token>,
    pub sampling: Sampling,
    /// Choices to generate (1 to the number of sequences): each in its own sequence,
    /// which starts as a copy of the first one's prompt cells.
    pub n: usize,
    /// Compute the prompt's pooled embedding instead of generating (a context made with
    /// embeddings on; the prompt must fit one micro-batch).
    pub embed: bool,
    /// Where the events go; dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
}

/// Counters the HTTP side reads (`/health`).
#[derive(Debug, Default)]
pub struct Load {
    /// Sequences generating now.
    pub active: AtomicUsize,
    /// Jobs waiting in the queue.
    pub queued: AtomicUsize,
    /// Jobs stopped because their client went away.
    pub cancelled: AtomicUsize,
    /// Jobs started (taken into sequences), since the start.
    pub started: AtomicU64,
    /// Jobs turned away because the queue was full.
    pub rejected: AtomicU64,
    /// Prompt tokens decoded (once per request, whatever its `n`).
    pub prompt_tokens: AtomicU64,
    /// Tokens generated, all choices together.
    pub generated_tokens: AtomicU64,
    /// Successful `llama_decode` calls.
    pub decodes: AtomicU64,
    /// Set when the worker has ended, by returning or by a panic: nothing is decoded any
    /// more (`/health` answers 503).
    pub stopped: AtomicBool,
}

/// The HTTP side's handle on the worker.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: SyncSender<Job>,
    load: Arc<Load>,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full: try again later (HTTP 503).
    QueueFull,
    /// The worker is gone.
    Stopped,
}

impl EngineHandle {
    /// Queues `job` without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.load.queued.fetch_add(1, Ordering::SeqCst);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.load.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match err {
                    TrySendError::Full(_) => {
                        self.load.rejected.fetch_add(1, Ordering::Relaxed);
                        SubmitError::QueueFull
                    }
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// The worker's counters.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Whether the worker still runs.
    pub fn is_running(&self) -> bool {
        !self.load.stopped.load(Ordering::SeqCst)
    }
}

/// The worker's end of the queue; [`run_worker`] consumes it.
pub struct JobQueue {
    jobs: Receiver<Job>,
    load: Arc<Load>,
}

/// A queue of `capacity` waiting jobs: the HTTP side's handle and the worker's end.
pub fn queue(capacity: usize) -> (EngineHandle, JobQueue) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let load = Arc::new(Load::default());
    (
        EngineHandle {
            jobs: tx,
            load: Arc::clone(&load),
        },
        JobQueue { jobs: rx, load },
    )
}

/// One active choice of a request: its sequence, sampler and progress.
struct Slot<'m> {
    seq: SeqId,
    /// The request it belongs to (its choices share this id).
    job: u64,
    /// Which choice of the request.
    choice: usize,
    /// Set while this choice waits for the slot at that index (its request's first choice)
    /// to decode the prompt, whose cells it then copies.
    waits_for: Option<usize>,
    /// For a request's first choice: the slots of the other choices.
    followers: Vec<usize>,
    /// An embedding job: its prompt is decoded whole, in one micro-batch.
    embed: bool,
    /// The prompt's log-probabilities so far (with [`Sampling::prompt_logprobs`]).
    prompt_logprobs: Vec<Logprob>,
    prompt: Vec<Token>,
    /// Tokens of this sequence already in the KV cache.
    n_past: usize,
    /// The last sampled token, to be decoded next step.
    next: Option<Token>,
    sampler: Sampler<'m>,
    sampling: Sampling,
    events: UnboundedSender<Event>,
    decoder: Utf8Decoder,
    /// Generated text not yet sent because it may be the start of a stop text.
    held: String,
    /// Tokens of the completion so far: an end-of-generation token that ends it is not
    /// one (as in the library's `GenerationStats::generated_tokens`).
    generated: usize,
}

impl Slot<'_> {
    fn finish(&self, reason: FinishReason) -> Event {
        Event::Done {
            choice: self.choice,
            finish_reason: reason,
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated,
        }
    }
}

/// A slot's share of one decode step: its next token, or the next `len` tokens of its
/// prompt.
#[derive(Debug, Clone, Copy)]
struct Part {
    /// The slot (its index is its sequence id).
    slot: usize,
    /// Tokens from the slot's `n_past` on.
    len: usize,
}

/// Where a part's tokens went in the batch.
#[derive(Debug, Clone, Copy)]
struct PartOutput {
    /// The batch index of the part's first token.
    start: usize,
    /// The batch index of its output for sampling, if it has one.
    last: Option<usize>,
}

/// Why a step's decode failed.
enum StepError {
    /// The KV cache has no room for the step (llama_decode returned 1; memory unchanged).
    Full,
    /// Anything else, in words.
    Failed(String),
}

/// Sets [`Load::stopped`] when dropped: when the worker returns, and when a panic
/// unwinds it.
struct StoppedOnDrop<'a>(&'a Load);

impl Drop for StoppedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        if std::thread::panicking() {
            log::error!("the decoding worker panicked: no request is served any more");
        }
    }
}

/// Runs the worker until every [`EngineHandle`] is dropped: admits jobs into free
/// sequences, decodes all active sequences in one batch per step, samples, streams.
pub fn run_worker(ctx: &mut Context<'_>, queue: JobQueue) {
    let n_seq = ctx.n_seq_max() as usize;
    let n_batch = ctx.n_batch() as usize;
    let vocab = ctx.model().vocab();
    let mut worker = Worker {
        slots: (0..n_seq).map(|_| None).collect(),
        batch: Batch::with_capacity(n_batch),
        n_batch,
        n_ubatch: ctx.n_ubatch() as usize,
        n_ctx_seq: ctx.n_ctx_seq() as usize,
        load: &queue.load,
        vocab,
        ctx,
    };
    // Declared after the worker, so dropped before it: `/health` says 503 before the
    // clients of the requests it held see their streams end.
    let _stopped = StoppedOnDrop(&queue.load);
    let mut disconnected = false;
    // A request taken from the queue that waits for enough free sequences (one per
    // choice); requests behind it wait too, in order.
    let mut pending: Option<Job> = None;
    let mut next_job = 0u64;

    loop {
        // Admit waiting jobs into free sequences; block only when nothing is running.
        loop {
            let free: Vec<usize> = (0..worker.slots.len())
                .filter(|&i| worker.slots[i].is_none())
                .collect();
            if free.is_empty() {
                break;
            }
            let job = match pending.take() {
                Some(job) => job,
                None if worker.slots.iter().all(Option::is_none) && !disconnected => {
                    match queue.jobs.recv() {
                        Ok(job) => job,
                        Err(_) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                None => match queue.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                },
            };
            if job.events.is_closed() {
                queue.load.queued.fetch_sub(1, Ordering::SeqCst);
                queue.load.cancelled.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let n = job.n.max(1);
            if n > free.len() {
                if n > worker.slots.len() {
                    queue.load.queued.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.events.send(Event::Failed(format!(
                        "n = {n} choices need {n} sequences; there are {}",
                        worker.slots.len()
                    )));
                    continue;
                }
                pending = Some(job);
                break;
            }
            queue.load.queued.fetch_sub(1, Ordering::SeqCst);
            queue.load.started.fetch_add(1, Ordering::Relaxed);
            next_job += 1;
            if let Err(e) = worker.admit(job, &free[..n], next_job) {
                log::warn!("request not started: {e}");
            }
        }
        if worker.slots.iter().all(Option::is_none) {
            if disconnected && pending.is_none() {
                return;
            }
            continue;
        }

        // Clients that went away: stop and free their sequences.
        let mut gone = Vec::new();
        for i in 0..worker.slots.len() {
            if let Some(s) = worker.slots[i].as_ref().filter(|s| s.events.is_closed()) {
                if !gone.contains(&s.job) {
                    gone.push(s.job);
                    queue.load.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                worker.free(i);
            }
        }

        let parts = worker.plan();
        if !parts.is_empty() {
            worker.step(parts);
        }
    }
}

/// The worker's state: the context, the active requests and the batch it reuses.
struct Worker<'c, 'm> {
    ctx: &'c mut Context<'m>,
    vocab: Vocab<'m>,
    /// One per sequence; `None` when the sequence is free.
    slots: Vec<Option<Slot<'m>>>,
    batch: Batch,
    n_batch: usize,
    n_ubatch: usize,
    n_ctx_seq: usize,
    load: &'c Load,
}

impl<'m> Worker<'_, 'm> {
    /// Puts the `job.n` choices of `job` into the free slots `free`: the first decodes the
    /// prompt, the others wait to copy its cells. Fails the job (and says so to its
    /// client) if a sampler cannot be built.
    fn admit(&mut self, job: Job, free: &[usize], id: u64) -> Result<(), String> {
        let mut samplers = Vec::with_capacity(free.len());
        for choice in 0..free.len() {
            let mut sampling = job.sampling.clone();
            sampling.seed = sampling.seed.map(|s| choice_seed(s, choice));
            let built = sampler(&self.vocab, &sampling)
                .map_err(|e| format!("sampler: {e}"))
                .and_then(|mut s| {
                    // The penalties and DRY look back at the prompt too, as in
                    // llama-server; not through a grammar, which the prompt would not
                    // match (the library feeds the grammar every accepted token).
                    let window = sampling
                        .penalties
                        .map_or(0, |p| p.last_n.max(0) as usize)
                        .max(
                            sampling
                                .dry
                                .as_ref()
                                .map_or(0, |d| d.penalty_last_n.max(0) as usize),
                        );
                    if sampling.grammar.is_none()
                        && sampling.schema.is_none()
                        && sampling.mirostat.is_none()
                    {
                        let from = job.prompt.len().saturating_sub(window);
                        for &t in &job.prompt[from..] {
                            s.accept(t).map_err(|e| format!("sampler: {e}"))?;
                        }
                    }
                    Ok(s)
                });
            match built {
                Ok(s) => samplers.push((s, sampling)),
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.clone()));
                    return Err(e);
                }
            }
        }
        let leader = free[0];
        for (choice, ((sampler, sampling), &slot)) in samplers.into_iter().zip(free).enumerate() {
            self.load.active.fetch_add(1, Ordering::SeqCst);
            self.slots[slot] = Some(Slot {
                seq: SeqId(slot as i32),
                job: id,
                choice,
                waits_for: (choice > 0).then_some(leader),
                followers: if choice == 0 {
                    free[1..].to_vec()
                } else {
                    Vec::new()
                },
                embed: job.embed,
                prompt_logprobs: Vec::new(),
                prompt: job.prompt.clone(),
                n_past: 0,
                next: None,
                sampler,
                sampling,
                events: job.events.clone(),
                decoder: Utf8Decoder::new(),
                held: String::new(),
                generated: 0,
            });
        }
        Ok(())
    }

    /// The next step: every generating sequence's next token first, then prompt chunks
    /// in the room left, so a long prompt does not stall the others' decoding. At most
    /// `n_batch` tokens: a generating sequence beyond that waits for the next step (the
    /// server refuses `--parallel` above the batch size at start-up, so none does).
    ///
    /// An embedding job's prompt goes whole into a batch of at most one micro-batch, and
    /// alone: llama.cpp pools each micro-batch on its own, and with one cache per
    /// sequence it splits a batch of several sequences into micro-batches of as many
    /// tokens of each (`split_equal`), which would cut the longer inputs.
    fn plan(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut room = self.n_batch;
        for (i, slot) in self.slots.iter().enumerate() {
            if room > 0 && slot.as_ref().is_some_and(|s| s.next.is_some()) {
                parts.push(Part { slot: i, len: 1 });
                room -= 1;
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if room == 0
                || slot.next.is_some()
                || slot.waits_for.is_some()
                || slot.n_past >= slot.prompt.len()
            {
                continue;
            }
            let mut len = room.min(slot.prompt.len() - slot.n_past);
            if slot.embed {
                len = slot.prompt.len();
                if !parts.is_empty() || len > self.n_batch.min(self.n_ubatch) {
                    continue;
                }
            }
            parts.push(Part { slot: i, len });
            room -= len;
        }
        parts
    }

    /// Decodes `parts` in one batch, then samples each part that ends with an output. A
    /// failed decode fails only the request(s) at fault ([`Worker::recover`]).
    fn step(&mut self, parts: Vec<Part>) {
        match self.decode(&parts) {
            Ok(outputs) => self.advance(&parts, &outputs),
            Err(e) => self.recover(parts, e),
        }
    }

    /// Decodes `parts` in one batch; the batch index of each part's output, if it has
    /// one.
    fn decode(&mut self, parts: &[Part]) -> Result<Vec<PartOutput>, StepError> {
        self.batch.clear();
        let mut outputs = Vec::with_capacity(parts.len());
        for part in parts {
            let start = self.batch.len();
            let Some(slot) = &self.slots[part.slot] else {
                outputs.push(PartOutput { start, last: None });
                continue;
            };
            let every = slot.sampling.prompt_logprobs;
            let added = match slot.next {
                Some(token) => self
                    .batch
                    .add(token, pos(slot.n_past), &[slot.seq], Output::Yes)
                    .map(|()| true),
                None => {
                    let end = slot.n_past + part.len;
                    let last = end == slot.prompt.len();
                    (slot.n_past..end)
                        .try_for_each(|at| {
                            let output = (every || (last && at + 1 == end)).into();
                            self.batch
                                .add(slot.prompt[at], pos(at), &[slot.seq], output)
                        })
                        .map(|()| last)
                }
            };
            match added {
                Ok(output) => outputs.push(PartOutput {
                    start,
                    last: output.then(|| self.batch.len() - 1),
                }),
                Err(e) => return Err(StepError::Failed(format!("building the batch: {e}"))),
            }
        }
        match self.ctx.decode(&self.batch) {
            Ok(()) => {
                self.load.decodes.fetch_add(1, Ordering::Relaxed);
                Ok(outputs)
            }
            Err(DecodeError::NoKvSlot) => Err(StepError::Full),
            Err(e) => Err(StepError::Failed(e.to_string())),
        }
    }

    /// After a successful decode: moves each part's sequence on and samples where the
    /// part has an output. A first choice whose prompt is now decoded hands its cells to
    /// the request's other choices, which sample from the same logits.
    fn advance(&mut self, parts: &[Part], outputs: &[PartOutput]) {
        for (part, output) in parts.iter().zip(outputs) {
            let Some(slot) = self.slots[part.slot].as_mut() else {
                continue;
            };
            let prompt_part = slot.next.take().is_none();
            if prompt_part {
                self.load
                    .prompt_tokens
                    .fetch_add(part.len as u64, Ordering::Relaxed);
                if slot.sampling.prompt_logprobs {
                    let top = slot.sampling.logprobs.unwrap_or(0);
                    // The logits at each position give the next prompt token's.
                    for j in 0..part.len {
                        let Some(&next) = slot.prompt.get(slot.n_past + j + 1) else {
                            break;
                        };
                        match self.ctx.logits(output.start + j) {
                            Ok(logits) => {
                                slot.prompt_logprobs
                                    .push(logprob(logits, next, top, &self.vocab))
                            }
                            Err(e) => log::error!("logits of a prompt row: {e}"),
                        }
                    }
                }
            }
            slot.n_past += part.len;
            let Some(index) = output.last else { continue };
            if prompt_part && slot.sampling.prompt_logprobs {
                let entries = std::mem::take(&mut slot.prompt_logprobs);
                let _ = slot.events.send(Event::PromptLogprobs { entries });
            }
            if slot.sampling.max_tokens == 0 {
                // Only the prompt's log-probabilities were asked for (`echo`).
                let job = slot.job;
                for i in 0..self.slots.len() {
                    if let Some(s) = self.slots[i].as_ref().filter(|s| s.job == job) {
                        let _ = s.events.send(s.finish(FinishReason::Length));
                        self.free(i);
                    }
                }
                continue;
            }
            if slot.embed {
                let event = match self.ctx.embeddings_seq(slot.seq) {
                    Ok(e) => Event::Embedding(normalised(e)),
                    Err(e) => Event::Failed(format!("reading the embedding: {e}")),
                };
                let _ = slot.events.send(event);
                self.free(part.slot);
                continue;
            }
            let (seq, n_past) = (slot.seq, slot.n_past);
            let followers = std::mem::take(&mut slot.followers);
            let mut to_sample = vec![part.slot];
            for f in followers {
                let Some(follower) = self.slots[f].as_mut() else {
                    continue;
                };
                follower.waits_for = None;
                follower.n_past = n_past;
                let dst = follower.seq;
                // The whole sequence: with one cache per sequence llama.cpp copies only
                // whole streams.
                if let Err(e) = self.ctx.seq_cp(seq, dst, ..) {
                    self.fail(part.slot, format!("copying the prompt's cells: {e}"));
                    break;
                }
                to_sample.push(f);
            }
            for i in to_sample {
                if self.slots[i].is_some() && self.sample(i, index) {
                    self.free(i);
                }
            }
        }
    }

    /// Samples the token of the choice in `slot` from the logits at batch index `index`,
    /// reports it; true when the choice has ended.
    fn sample(&mut self, slot: usize, index: usize) -> bool {
        let Some(s) = self.slots[slot].as_mut() else {
            return true;
        };
        let token = match s.sampler.sample(self.ctx, index) {
            Ok(token) => token,
            Err(e) => {
                let _ = s.events.send(Event::Failed(format!("sampling: {e}")));
                return true;
            }
        };
        let ends_here = self.vocab.is_eog(token) && !s.sampling.ignore_eos;
        if let (Some(top), false) = (s.sampling.logprobs, ends_here) {
            match self.ctx.logits(index) {
                Ok(logits) => {
                    let logprob = logprob(logits, token, top, &self.vocab);
                    let _ = s.events.send(Event::Logprob {
                        choice: s.choice,
                        logprob,
                    });
                }
                Err(e) => log::error!("logits of a sampled row: {e}"),
            }
        }
        let before = s.generated;
        let ended = take(s, token, &self.vocab, self.n_ctx_seq);
        self.load
            .generated_tokens
            .fetch_add((s.generated - before) as u64, Ordering::Relaxed);
        ended
    }

    /// A failed decode of `parts`: fails the request(s) that caused it and decodes the
    /// others again.
    ///
    /// With no room in the KV cache (possible when the sequences share it,
    /// `--kv-unified`), the request that would hold the most cells gives way, as often as
    /// needed. Any other failure does not say whose tokens it was about, so each part is
    /// decoded on its own, and the ones that fail alone fail.
    fn recover(&mut self, mut parts: Vec<Part>, error: StepError) {
        // Each sequence back where the step found it: a compute failure can leave the
        // cells of the micro-batches before it.
        for part in &parts {
            if let Some(slot) = &self.slots[part.slot] {
                if let Err(e) = self.ctx.seq_rm(Some(slot.seq), pos(slot.n_past)..) {
                    log::error!("rolling back sequence {}: {e}", slot.seq);
                }
            }
        }
        let full = || {
            format!(
                "the KV cache is full: the requests being served need more than its {} \
                 cells (-c), and this one held the most",
                self.ctx.n_ctx()
            )
        };
        if let [part] = parts[..] {
            let message = match error {
                StepError::Full => full(),
                StepError::Failed(e) => format!("decode failed: {e}"),
            };
            log::warn!("request in sequence {} failed: {message}", part.slot);
            self.fail(part.slot, message);
            return;
        }
        match error {
            StepError::Full => {
                let held = |p: &Part| self.slots[p.slot].as_ref().map_or(0, |s| s.n_past) + p.len;
                let Some(at) = (0..parts.len()).max_by_key(|&i| held(&parts[i])) else {
                    return;
                };
                let victim = parts.remove(at);
                let message = full();
                log::warn!("request in sequence {} stopped: {message}", victim.slot);
                self.fail(victim.slot, message);
                self.step(parts);
            }
            StepError::Failed(e) => {
                log::warn!(
                    "decode of {} requests together failed ({e}): each alone",
                    parts.len()
                );
                for part in parts {
                    self.step(vec![part]);
                }
            }
        }
    }

    /// Ends the request in `slot` with an error, and all its other choices.
    fn fail(&mut self, slot: usize, message: String) {
        let Some(s) = &self.slots[slot] else { return };
        let _ = s.events.send(Event::Failed(message));
        let job = s.job;
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| s.job == job) {
                self.free(i);
            }
        }
    }

    /// Ends the request in `slot`: removes its sequence's KV cells and marks it free.
    fn free(&mut self, slot: usize) {
        if let Some(s) = self.slots[slot].take() {
            if let Err(e) = self.ctx.seq_rm(Some(s.seq), ..) {
                log::error!("freeing sequence {}: {e}", s.seq);
            }
            self.load.active.fetch_sub(1, Ordering::SeqCst);
            log::debug!(
                "sequence {} done: {} prompt + {} generated tokens",
                s.seq,
                s.prompt.len(),
                s.generated
            );
        }
    }
}

/// Takes the sampled `token` into `slot`: sends its text, or ends the generation
/// (returns true, after sending [`Event::Done`]).
fn take(slot: &mut Slot<'_>, token: Token, vocab: &Vocab<'_>, n_ctx_seq: usize) -> bool {
    if vocab.is_eog(token) && !slot.sampling.ignore_eos {
        let rest = std::mem::take(&mut slot.held) + &slot.decoder.finish();
        send_text(slot, rest);
        let _ = slot.events.send(slot.finish(FinishReason::Stop));
        return true;
    }
    slot.generated += 1;
    let bytes = vocab
        .token_to_bytes(token, RenderSpecial::No)
        .unwrap_or_default();
    let piece = slot.decoder.push(&bytes);
    slot.held.push_str(&piece);
    if let Some(at) = slot
        .sampling
        .stop
        .iter()
        .filter_map(|s| slot.held.find(s.as_str()))
        .min()
    {
        let before = slot.held[..at].to_owned();
        send_text(slot, before);
        let _ = slot.events.send(slot.finish(FinishReason::Stop));
        return true;
    }
    let keep = held_back(&slot.held, &slot.sampling.stop);
    let ready: String = slot.held.drain(..slot.held.len() - keep).collect();
    send_text(slot, ready);
    // The sampled token is decoded next step at n_past; it needs a free cell.
    if slot.generated >= slot.sampling.max_tokens || slot.n_past >= n_ctx_seq {
        let rest = std::mem::take(&mut slot.held) + &slot.decoder.finish();
        send_text(slot, rest);
        let _ = slot.events.send(slot.finish(FinishReason::Length));
        return true;
    }
    slot.next = Some(token);
    false
}

fn send_text(slot: &Slot<'_>, text: String) {
    if !text.is_empty() {
        let _ = slot.events.send(Event::Text {
            choice: slot.choice,
            text,
        });
    }
}

/// `v` scaled to length 1 (as llama-server's OpenAI endpoint returns embeddings); a zero
/// vector stays zero.
fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
    v.iter().map(|&x| x * scale).collect()
}

/// The seed of choice `choice` of a request seeded with `seed`: each choice its own
/// draw, never `u32::MAX` (which asks llama.cpp for a random seed).
fn choice_seed(seed: u32, choice: usize) -> u32 {
    let s = seed.wrapping_add(choice as u32);
    if s == u32::MAX {
        0
    } else {
        s
    }
}

/// The log-probability of `token` and of the `top` most likely tokens under `logits`
/// (the log-softmax, computed in f64 so that a 150k-token vocabulary sums exactly
/// enough).
pub fn logprob(logits: &[f32], token: Token, top: usize, vocab: &Vocab<'_>) -> Logprob {
    let (best, ranked) = log_softmax_top(logits, top);
    let prob = |id: usize, logprob: f32| TokenProb {
        token: Token(id as i32),
        bytes: vocab
            .token_to_bytes(Token(id as i32), RenderSpecial::Yes)
            .unwrap_or_default(),
        logprob,
    };
    let at = usize::try_from(token.0).unwrap_or(0).min(logits.len() - 1);
    Logprob {
        sampled: prob(at, (f64::from(logits[at]) - best) as f32),
        top: ranked.into_iter().map(|(id, lp)| prob(id, lp)).collect(),
    }
}

/// The log-normaliser of `logits` (so that a token's log-probability is its logit minus
/// it) and the `top` most likely tokens with their log-probabilities, most likely first
/// (ties: the lower id first).
pub fn log_softmax_top(logits: &[f32], top: usize) -> (f64, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let norm = max + sum.ln();
    let mut ranked: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if ranked.len() == top && ranked.last().is_some_and(|&(_, worst)| l <= worst) {
                continue;
            }
            let at = ranked.partition_point(|&(_, x)| x >= l);
            ranked.insert(at, (id, l));
            ranked.truncate(top);
        }
    }
    let ranked = ranked
        .into_iter()
        .map(|(id, l)| (id, (f64::from(l) - norm) as f32))
        .collect();
    (norm, ranked)
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop text: those
/// bytes wait until the next token says whether the stop text follows.
pub fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for stop in stops {
        for (len, _) in stop.char_indices().skip(1) {
            if len > keep && text.ends_with(&stop[..len]) {
                keep = len;
            }
        }
    }
    keep
}

fn pos(i: usize) -> Pos {
    Pos(i32::try_from(i).unwrap_or(i32::MAX))
}

/// The chain of `s`, in llama-server's order: grammar (always first in the library),
/// logit bias, then penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC and
/// temperature (dynamic when `dynatemp` is set) before a seeded pick. Greedy at
/// temperature 0 (after the stages that can change the most likely token). With
/// mirostat, only the logit bias, the temperature and mirostat, as in llama-server.
pub fn sampler<'m>(vocab: &Vocab<'m>, s: &Sampling) -> Result<Sampler<'m>, SamplerError> {
    let mut b = SamplerBuilder::new();
    if let Some(g) = &s.grammar {
        b = b.with_grammar(g.as_str(), "root");
    }
    if let Some(Schema(c)) = &s.schema {
        let c = Arc::clone(c);
        b = b.with_custom(move || (*c).clone());
    }
    if !s.logit_bias.is_empty() {
        b = b.with_logit_bias(s.logit_bias.iter().copied());
    }
    let seed = s.seed.unwrap_or(u32::MAX);
    if let Some((version, tau, eta)) = s.mirostat {
        b = b.with_temp(s.temperature);
        return if version == 1 {
            b.mirostat(
                vocab,
                Mirostat {
                    tau,
                    eta,
                    ..Mirostat::default()
                },
                seed,
            )
        } else {
            b.mirostat_v2(vocab, MirostatV2 { tau, eta }, seed)
        };
    }
    if let Some(p) = s.penalties {
        b = b.with_penalties(p);
    }
    if let Some(d) = &s.dry {
        b = b.with_dry(d.clone());
    }
    if s.temperature <= 0.0 {
        // XTC can drop the most likely token; the others keep it.
        if let Some(x) = s.xtc {
            b = b.with_xtc(Xtc { seed, ..x });
        }
        return b.greedy(vocab);
    }
    if let Some(n) = s.top_n_sigma {
        b = b.with_top_n_sigma(n);
    }
    if let Some(k) = s.top_k.filter(|&k| k > 0) {
        b = b.with_top_k(k);
    }
    if let Some(p) = s.typical_p.filter(|&p| p < 1.0) {
        b = b.with_typical(p, 1);
    }
    if let Some(p) = s.top_p {
        b = b.with_top_p(p, 1);
    }
    if let Some(p) = s.min_p {
        b = b.with_min_p(p, 1);
    }
    if let Some(x) = s.xtc {
        b = b.with_xtc(Xtc { seed, ..x });
    }
    b = match s.dynatemp {
        Some((delta, exponent)) => b.with_temp_ext(TempExt {
            temp: s.temperature,
            delta,
            exponent,
        }),
        None => b.with_temp(s.temperature),
    };
    b.dist(vocab, seed)
}

#[cfg(test)]
mod tests {
    use super::{held_back, log_softmax_top};

    #[test]
    fn log_softmax_ranks_and_normalises() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let (norm, top) = log_softmax_top(&logits, 3);
        let total: f64 = logits.iter().map(|&l| (f64::from(l) - norm).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // Most likely first; equal logits in id order.
        assert_eq!(
            top.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        assert!(top.iter().all(|&(_, lp)| lp <= 0.0));
        assert_eq!(top[0].1, top[1].1);
        assert!(((f64::from(top[2].1)) - (1.0 - norm)).abs() < 1e-6);
        assert!(log_softmax_top(&logits, 0).1.is_empty());
        assert_eq!(log_softmax_top(&logits, 10).1.len(), logits.len());
    }

    #[test]
    fn text_that_may_start_a_stop_text_is_held_back() {
        let stops = ["END".to_owned(), "\n\n".to_owned()];
        assert_eq!(held_back("hello E", &stops), 1);
        assert_eq!(held_back("hello EN", &stops), 2);
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("héllo", &["lé".to_owned()]), 0);
        assert_eq!(held_back("a l", &["lé".to_owned()]), 1);
    }
}
