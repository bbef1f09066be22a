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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use llama_cpp_moe::context::DecodeError;
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
    /// `None`: a random seed.
    pub seed: Option<u32>,
    /// Texts that end the generation (not included in the output).
    pub stop: Vec<String>,
    /// Go on past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
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

/// What the worker tells the request that submitted a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Generated text (never empty).
    Text(String),
    /// The end, with the real token counts.
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The generation failed; nothing more follows.
    Failed(String),
}

/// A request for the worker.
pub struct Job {
    /// The tokenized prompt (never empty; checked to fit the sequence's context).
    pub prompt: Vec<Token>,
    pub sampling: Sampling,
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
                    TrySendError::Full(_) => SubmitError::QueueFull,
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

/// One active request: its sequence, sampler and progress.
struct Slot<'m> {
    seq: SeqId,
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
        n_ctx_seq: ctx.n_ctx_seq() as usize,
        load: &queue.load,
        vocab,
        ctx,
    };
    // Declared after the worker, so dropped before it: `/health` says 503 before the
    // clients of the requests it held see their streams end.
    let _stopped = StoppedOnDrop(&queue.load);
    let mut disconnected = false;

    loop {
        // Admit waiting jobs into free sequences; block only when nothing is running.
        while let Some(free) = worker.slots.iter().position(Option::is_none) {
            let job = if worker.slots.iter().all(Option::is_none) && !disconnected {
                match queue.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => {
                        disconnected = true;
                        break;
                    }
                }
            } else {
                match queue.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            };
            queue.load.queued.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                queue.load.cancelled.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let sampler = match sampler(&worker.vocab, &job.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                    continue;
                }
            };
            queue.load.active.fetch_add(1, Ordering::SeqCst);
            worker.slots[free] = Some(Slot {
                seq: SeqId(free as i32),
                prompt: job.prompt,
                n_past: 0,
                next: None,
                sampler,
                sampling: job.sampling,
                events: job.events,
                decoder: Utf8Decoder::new(),
                held: String::new(),
                generated: 0,
            });
        }
        if worker.slots.iter().all(Option::is_none) {
            if disconnected {
                return;
            }
            continue;
        }

        // Clients that went away: stop and free their sequences.
        for i in 0..worker.slots.len() {
            if worker.slots[i]
                .as_ref()
                .is_some_and(|s| s.events.is_closed())
            {
                queue.load.cancelled.fetch_add(1, Ordering::SeqCst);
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
    n_ctx_seq: usize,
    load: &'c Load,
}

impl Worker<'_, '_> {
    /// The next step: every generating sequence's next token first, then prompt chunks
    /// in the room left, so a long prompt does not stall the others' decoding. At most
    /// `n_batch` tokens: a generating sequence beyond that waits for the next step (the
    /// server refuses `--parallel` above the batch size at start-up, so none does).
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
            if room == 0 || slot.next.is_some() || slot.n_past >= slot.prompt.len() {
                continue;
            }
            let len = room.min(slot.prompt.len() - slot.n_past);
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
    fn decode(&mut self, parts: &[Part]) -> Result<Vec<Option<usize>>, StepError> {
        self.batch.clear();
        let mut outputs = Vec::with_capacity(parts.len());
        for part in parts {
            let Some(slot) = &self.slots[part.slot] else {
                outputs.push(None);
                continue;
            };
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
                            let output = (last && at + 1 == end).into();
                            self.batch
                                .add(slot.prompt[at], pos(at), &[slot.seq], output)
                        })
                        .map(|()| last)
                }
            };
            match added {
                Ok(output) => outputs.push(output.then(|| self.batch.len() - 1)),
                Err(e) => return Err(StepError::Failed(format!("building the batch: {e}"))),
            }
        }
        match self.ctx.decode(&self.batch) {
            Ok(()) => Ok(outputs),
            Err(DecodeError::NoKvSlot) => Err(StepError::Full),
            Err(e) => Err(StepError::Failed(e.to_string())),
        }
    }

    /// After a successful decode: moves each part's sequence on and samples where the
    /// part has an output.
    fn advance(&mut self, parts: &[Part], outputs: &[Option<usize>]) {
        for (part, output) in parts.iter().zip(outputs) {
            let Some(slot) = self.slots[part.slot].as_mut() else {
                continue;
            };
            slot.next = None;
            slot.n_past += part.len;
            let Some(index) = *output else { continue };
            let ended = match slot.sampler.sample(self.ctx, index) {
                Err(e) => {
                    let _ = slot.events.send(Event::Failed(format!("sampling: {e}")));
                    true
                }
                Ok(token) => take(slot, token, &self.vocab, self.n_ctx_seq),
            };
            if ended {
                self.free(part.slot);
            }
        }
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

    /// Ends the request in `slot` with an error.
    fn fail(&mut self, slot: usize, message: String) {
        if let Some(s) = &self.slots[slot] {
            let _ = s.events.send(Event::Failed(message));
        }
        self.free(slot);
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
        let _ = slot.events.send(Event::Text(text));
    }
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

fn sampler<'m>(vocab: &Vocab<'m>, s: &Sampling) -> Result<Sampler<'m>, String> {
    if s.temperature <= 0.0 {
        return SamplerBuilder::new()
            .greedy(vocab)
            .map_err(|e| format!("sampler: {e}"));
    }
    let mut b = SamplerBuilder::new();
    if let Some(k) = s.top_k.filter(|&k| k > 0) {
        b = b.with_top_k(k);
    }
    if let Some(p) = s.top_p {
        b = b.with_top_p(p, 1);
    }
    if let Some(p) = s.min_p {
        b = b.with_min_p(p, 1);
    }
    b.with_temp(s.temperature)
        .dist(vocab, s.seed.unwrap_or(u32::MAX))
        .map_err(|e| format!("sampler: {e}"))
}

#[cfg(test)]
mod tests {
    use super::held_back;

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
