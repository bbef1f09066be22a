//! The decoding engine: one worker thread owns the [`Context`] and decodes every active
//! request together, one sequence each, in one batch per step.
//!
//! Requests arrive over a bounded channel (the queue); the worker admits one whenever a
//! sequence is free. Each request gets its events back over its own channel; when the
//! HTTP side drops that channel (the client went away) the worker stops the generation
//! and frees the sequence's KV cells.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use llama_cpp_moe::{
    Batch, Context, Output, Pos, RenderSpecial, Sampler, SamplerBuilder, SeqId, Token, Utf8Decoder,
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
    generated: usize,
    /// Batch index of this slot's output in the current step.
    output_index: Option<usize>,
    /// Tokens of this slot in the current step's batch.
    in_batch: usize,
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

/// Runs the worker until every [`EngineHandle`] is dropped: admits jobs into free
/// sequences, decodes all active sequences in one batch per step, samples, streams.
pub fn run_worker(ctx: &mut Context<'_>, queue: JobQueue) {
    let n_seq = ctx.n_seq_max() as usize;
    let n_batch = ctx.n_batch() as usize;
    let n_ctx_seq = ctx.n_ctx_seq() as usize;
    let model = ctx.model();
    let vocab = model.vocab();
    let mut slots: Vec<Option<Slot<'_>>> = (0..n_seq).map(|_| None).collect();
    let mut batch = Batch::with_capacity(n_batch);
    let mut disconnected = false;

    loop {
        // Admit waiting jobs into free sequences; block only when nothing is running.
        while let Some(free) = slots.iter().position(Option::is_none) {
            let job = if slots.iter().all(Option::is_none) && !disconnected {
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
            let sampler = match sampler(&vocab, &job.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                    continue;
                }
            };
            queue.load.active.fetch_add(1, Ordering::SeqCst);
            slots[free] = Some(Slot {
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
                output_index: None,
                in_batch: 0,
            });
        }
        if slots.iter().all(Option::is_none) {
            if disconnected {
                return;
            }
            continue;
        }

        // Clients that went away: stop and free their sequences.
        for slot in &mut slots {
            if slot.as_ref().is_some_and(|s| s.events.is_closed()) {
                queue.load.cancelled.fetch_add(1, Ordering::SeqCst);
                free_slot(ctx, slot, &queue.load);
            }
        }

        // One batch: every generating sequence's next token first, then prompt chunks
        // in the room left (so a long prompt does not stall the others' decoding).
        batch.clear();
        let mut build_error = None;
        for slot in slots.iter_mut().flatten() {
            slot.output_index = None;
            slot.in_batch = 0;
            if let Some(token) = slot.next {
                let index = batch.len();
                if let Err(e) = batch.add(token, pos(slot.n_past), &[slot.seq], Output::Yes) {
                    build_error = Some(e.to_string());
                }
                slot.output_index = Some(index);
                slot.in_batch = 1;
            }
        }
        for slot in slots.iter_mut().flatten() {
            if slot.next.is_some() || slot.n_past >= slot.prompt.len() {
                continue;
            }
            let room = n_batch.saturating_sub(batch.len());
            let chunk = room.min(slot.prompt.len() - slot.n_past);
            slot.in_batch = chunk;
            for i in 0..chunk {
                let at = slot.n_past + i;
                let last = at + 1 == slot.prompt.len();
                if let Err(e) = batch.add(slot.prompt[at], pos(at), &[slot.seq], last.into()) {
                    build_error = Some(e.to_string());
                }
                if last {
                    slot.output_index = Some(batch.len() - 1);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let decoded = match build_error {
            Some(e) => Err(e),
            None => ctx.decode(&batch).map_err(|e| e.to_string()),
        };
        if let Err(e) = decoded {
            log::error!("decode failed: {e}");
            for slot in &mut slots {
                if let Some(s) = slot.as_ref() {
                    let _ = s.events.send(Event::Failed(format!("decode failed: {e}")));
                }
                free_slot(ctx, slot, &queue.load);
            }
            continue;
        }

        // Advance every slot that took part; sample where there is an output.
        for slot_entry in &mut slots {
            let Some(slot) = slot_entry.as_mut() else {
                continue;
            };
            slot.next = None;
            slot.n_past += slot.in_batch;
            let Some(index) = slot.output_index else {
                continue;
            };
            let ended = match slot.sampler.sample(ctx, index) {
                Err(e) => {
                    let _ = slot.events.send(Event::Failed(format!("sampling: {e}")));
                    true
                }
                Ok(token) => {
                    slot.generated += 1;
                    step(slot, token, &vocab, n_ctx_seq)
                }
            };
            if ended {
                free_slot(ctx, slot_entry, &queue.load);
            }
        }
    }
}

/// Takes the sampled `token` into `slot`: sends its text, or ends the generation
/// (returns true, after sending [`Event::Done`]).
fn step(
    slot: &mut Slot<'_>,
    token: Token,
    vocab: &llama_cpp_moe::Vocab<'_>,
    n_ctx_seq: usize,
) -> bool {
    if vocab.is_eog(token) && !slot.sampling.ignore_eos {
        let rest = std::mem::take(&mut slot.held) + &slot.decoder.finish();
        send_text(slot, rest);
        let _ = slot.events.send(slot.finish(FinishReason::Stop));
        return true;
    }
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

/// Ends `slot`: removes its sequence's KV cells and marks it free.
fn free_slot(ctx: &mut Context<'_>, slot: &mut Option<Slot<'_>>, load: &Load) {
    if let Some(s) = slot.take() {
        if let Err(e) = ctx.seq_rm(Some(s.seq), ..) {
            log::error!("freeing sequence {}: {e}", s.seq);
        }
        load.active.fetch_sub(1, Ordering::SeqCst);
        log::debug!(
            "sequence {} done: {} prompt + {} generated tokens",
            s.seq,
            s.prompt.len(),
            s.generated
        );
    }
}

fn sampler<'m>(vocab: &llama_cpp_moe::Vocab<'m>, s: &Sampling) -> Result<Sampler<'m>, String> {
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
