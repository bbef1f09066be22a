//! Context: decoding, typed decode errors, outputs, memory ops, breakdown, perf.

mod ctx_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ctx_support::{moe, small_ctx, small_params};
use llama_cpp_moe::context::ClearData;
use llama_cpp_moe::context::{
    ContextError, DecodeError, FlashAttention, KvCacheType, MemoryError, OutputError, PoolingType,
    WeightlessModel,
};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{
    Backend, Batch, Context, Model, ModelParams, Output, Pos, Sampler, SeqId, Token, Vocab,
};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog.";

fn prompt_tokens() -> Vec<Token> {
    moe()
        .vocab()
        .tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::No)
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn thread_safety_markers() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Context<'static>>();
    send::<Sampler<'static>>();
    send::<Vocab<'static>>();
    sync::<Vocab<'static>>();
}

#[test]
fn decode_prompt_gives_finite_logits_for_the_outputs_only() {
    let model = moe();
    let mut ctx = small_ctx(model);
    let tokens = prompt_tokens();
    assert!(tokens.len() > 5);
    let mut batch = Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap();
    batch.set_output(0, Output::Yes);
    ctx.decode(&batch).unwrap();

    let last = tokens.len() - 1;
    assert_eq!(ctx.output_indices().collect::<Vec<_>>(), vec![0, last]);
    let n_vocab = model.vocab().n_tokens();
    for i in [0, last] {
        let logits = ctx.logits(i).unwrap();
        assert_eq!(logits.len(), n_vocab);
        assert!(logits.iter().all(|x| x.is_finite()), "row {i}");
    }
    // Rows are distinct: the first and last positions see different contexts.
    assert_ne!(ctx.logits(0).unwrap(), ctx.logits(last).unwrap());
    assert_eq!(
        ctx.logits(1).unwrap_err(),
        OutputError::NotAnOutput { index: 1 }
    );
    assert_eq!(
        ctx.logits(last + 1).unwrap_err(),
        OutputError::NotAnOutput { index: last + 1 }
    );
    // Embeddings were not requested.
    assert!(matches!(
        ctx.embeddings(last),
        Err(OutputError::Unavailable(_))
    ));
    assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), Some(Pos(last as i32)));
    assert_eq!(ctx.seq_pos_min(SeqId(0)).unwrap(), Some(Pos(0)));
}

#[test]
fn bad_batches_are_typed_errors_not_aborts() {
    let model = moe();
    let mut ctx = small_ctx(model);
    let n_vocab = model.vocab().n_tokens();

    assert_eq!(ctx.decode(&Batch::new()), Err(DecodeError::EmptyBatch));

    for bad in [Token(n_vocab as i32), Token(-1), Token(i32::MAX)] {
        let batch = Batch::from_tokens(&[Token(1), bad], Pos(0), SeqId(0)).unwrap();
        assert_eq!(
            ctx.decode(&batch),
            Err(DecodeError::TokenOutOfRange {
                index: 1,
                token: bad,
                n_vocab
            })
        );
    }

    let n_batch = ctx.n_batch() as usize;
    let too_many = vec![Token(1); n_batch + 1];
    assert_eq!(
        ctx.decode(&Batch::from_tokens(&too_many, Pos(0), SeqId(0)).unwrap()),
        Err(DecodeError::TooManyTokens {
            n_tokens: n_batch + 1,
            limit: n_batch
        })
    );

    let mut other_seq = Batch::new();
    other_seq
        .add(Token(1), Pos(0), &[SeqId(5)], Output::Yes)
        .unwrap();
    assert_eq!(
        ctx.decode(&other_seq),
        Err(DecodeError::InvalidSeqId {
            seq: SeqId(5),
            n_seq_max: 1
        })
    );

    // Nothing above reached llama.cpp's memory.
    assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), None);

    // Positions that skip ahead are rejected by llama.cpp itself (-1).
    ctx.decode(&Batch::from_tokens(&[Token(1), Token(2)], Pos(0), SeqId(0)).unwrap())
        .unwrap();
    let gap = Batch::from_tokens(&[Token(3)], Pos(10), SeqId(0)).unwrap();
    assert!(matches!(
        ctx.decode(&gap),
        Err(DecodeError::InvalidBatch { .. })
    ));
    // A failed decode leaves no readable output behind.
    assert!(ctx.logits(0).is_err());
    assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), Some(Pos(1)));
}

#[test]
fn full_kv_cache_is_no_kv_slot() {
    let model = moe();
    let mut ctx = small_ctx(model);
    let n_ctx = ctx.n_ctx() as usize;
    let chunk = ctx.n_batch() as usize;
    let mut pos = 0;
    while pos < n_ctx {
        let n = chunk.min(n_ctx - pos);
        let toks = vec![Token(10); n];
        ctx.decode(&Batch::from_tokens(&toks, Pos(pos as i32), SeqId(0)).unwrap())
            .unwrap();
        pos += n;
    }
    let more = Batch::from_tokens(&[Token(10)], Pos(pos as i32), SeqId(0)).unwrap();
    assert_eq!(ctx.decode(&more), Err(DecodeError::NoKvSlot));
    // Freeing room makes the same position decodable again.
    ctx.seq_rm(Some(SeqId(0)), Pos(n_ctx as i32 - 4)..).unwrap();
    let again = Batch::from_tokens(&[Token(10)], Pos(n_ctx as i32 - 4), SeqId(0)).unwrap();
    ctx.decode(&again).unwrap();
}

#[test]
fn abort_callback_stops_decode_and_its_panic_is_resumed() {
    let model = moe();
    let stop = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&stop);
    let params = small_params().with_abort_callback(move || flag.load(Ordering::Relaxed));
    let mut ctx = Context::new(model, &params).unwrap();
    let batch = Batch::from_tokens(&prompt_tokens(), Pos(0), SeqId(0)).unwrap();
    assert_eq!(ctx.decode(&batch), Err(DecodeError::Aborted));
    ctx.clear_memory(ClearData::Keep).unwrap();
    stop.store(false, Ordering::Relaxed);
    ctx.decode(&batch).unwrap();

    let params = small_params().with_abort_callback(|| panic!("callback panicked"));
    let mut ctx = Context::new(model, &params).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.decode(&batch)));
    let payload = caught.expect_err("the callback's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"callback panicked"));
}

#[test]
fn sequence_ops_copy_remove_keep_and_shift() {
    let model = moe();
    // One unified cache, so sequences share cells and seq_keep sees all of them.
    let params = small_params().with_n_seq_max(3).with_kv_unified(true);
    let mut ctx = Context::new(model, &params).unwrap();
    assert_eq!(ctx.n_seq_max(), 3);
    let tokens = prompt_tokens();
    let n = tokens.len() as i32;
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    let logits_seq0 = ctx.logits(tokens.len() - 1).unwrap().to_vec();

    ctx.seq_cp(SeqId(0), SeqId(1), ..).unwrap();
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(n - 1)));
    assert_eq!(ctx.seq_pos_max(SeqId(2)).unwrap(), None);

    // Sequence 1 continues from the copied prefix exactly as sequence 0 would.
    let next = Token(argmax(&logits_seq0) as i32);
    let mut b = Batch::new();
    b.add(next, Pos(n), &[SeqId(0)], Output::Yes).unwrap();
    b.add(next, Pos(n), &[SeqId(1)], Output::Yes).unwrap();
    ctx.decode(&b).unwrap();
    assert_eq!(ctx.logits(0).unwrap(), ctx.logits(1).unwrap());

    ctx.seq_rm(Some(SeqId(1)), Pos(2)..).unwrap();
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(1)));
    assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), Some(Pos(n)));

    // Copied cells are shared, so shifting waits until sequence 1 owns its cells alone.
    ctx.seq_keep(SeqId(1)).unwrap();
    assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), None);
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(1)));

    ctx.seq_add(SeqId(1), .., 5).unwrap();
    assert_eq!(ctx.seq_pos_min(SeqId(1)).unwrap(), Some(Pos(5)));
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(6)));
    ctx.seq_div(SeqId(1), .., 2).unwrap();
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(3)));
    assert_eq!(
        ctx.seq_div(SeqId(1), .., 1),
        Err(MemoryError::InvalidDivisor(1))
    );

    for bad in [SeqId(-1), SeqId(3), SeqId(100)] {
        assert_eq!(
            ctx.seq_keep(bad),
            Err(MemoryError::InvalidSeqId {
                seq: bad,
                n_seq_max: 3
            })
        );
        assert!(ctx.seq_cp(SeqId(0), bad, ..).is_err());
        assert!(ctx.seq_pos_max(bad).is_err());
    }
    // A negative position would mean "the whole sequence" to llama.cpp.
    assert_eq!(
        ctx.seq_rm(Some(SeqId(1)), Pos(-1)..),
        Err(MemoryError::NegativePos(Pos(-1)))
    );
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), Some(Pos(3)));
    // None means every sequence.
    ctx.seq_rm(None, ..).unwrap();
    assert_eq!(ctx.seq_pos_max(SeqId(1)).unwrap(), None);
    ctx.clear_memory(ClearData::Zero).unwrap();
}

#[test]
fn memory_breakdown_has_a_cpu_row_with_the_weights() {
    let model = moe();
    let ctx = small_ctx(model);
    let rows = ctx.memory_breakdown().unwrap();
    let cpu = rows
        .iter()
        .find(|r| r.buffer_type_name().starts_with("CPU"))
        .unwrap_or_else(|| panic!("no CPU row in {rows:?}"));
    assert!(cpu.is_host);
    assert!(cpu.model_bytes > 0, "{rows:?}");
    let total_model: usize = rows.iter().map(|r| r.model_bytes).sum();
    // Every byte of weights is accounted for in some buffer type.
    assert!(total_model as u64 >= model_size(model) / 2, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.context_bytes > 0),
        "KV cache: {rows:?}"
    );
}

fn model_size(model: &llama_cpp_moe::Model) -> u64 {
    // SAFETY: valid model pointer for the duration of the call.
    unsafe { llama_cpp_moe::sys::llama_model_size(model.as_ptr()) }
}

#[test]
fn perf_counts_prompt_tokens_and_generation_steps() {
    let model = moe();
    let mut ctx = small_ctx(model);
    ctx.reset_perf();
    let tokens = prompt_tokens();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    for i in 0..3 {
        let b = Batch::from_tokens(&[Token(20)], Pos((tokens.len() + i) as i32), SeqId(0)).unwrap();
        ctx.decode(&b).unwrap();
    }
    let perf = ctx.perf();
    assert_eq!(perf.n_prompt_tokens as usize, tokens.len());
    assert_eq!(perf.n_eval, 3);
    assert!(ctx.model_load_time().is_some());
}

#[test]
fn every_context_option_creates_a_working_context() {
    let model = moe();
    let tokens = prompt_tokens();
    let reference = {
        let mut ctx = small_ctx(model);
        ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
            .unwrap();
        argmax(ctx.logits(tokens.len() - 1).unwrap())
    };
    let variants = [
        small_params().with_flash_attention(FlashAttention::Enabled),
        small_params().with_flash_attention(FlashAttention::Disabled),
        small_params().with_op_offload(false),
        small_params().with_offload_kqv(false),
        small_params().with_n_ubatch(8),
        small_params().with_n_threads(1).with_n_threads_batch(2),
        small_params().with_kv_cache_type(KvCacheType::F32, KvCacheType::F32),
        small_params()
            .with_flash_attention(FlashAttention::Enabled)
            .with_kv_cache_type(KvCacheType::Q8_0, KvCacheType::Q8_0),
        small_params().with_kv_unified(true).with_n_seq_max(2),
        small_params().with_perf(false),
    ];
    for params in variants {
        let mut ctx = Context::new(model, &params).unwrap_or_else(|e| panic!("{params:?}: {e}"));
        assert_eq!(ctx.n_threads(), params.n_threads());
        assert_eq!(ctx.n_threads_batch(), params.n_threads_batch());
        assert!(ctx.n_ubatch() <= params.n_ubatch());
        ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
            .unwrap();
        let logits = ctx.logits(tokens.len() - 1).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()), "{params:?}");
        // Exact options (no quantised cache) agree on the most likely token.
        if params.kv_cache_type().0 != KvCacheType::Q8_0 {
            assert_eq!(argmax(logits), reference, "{params:?}");
        }
    }
}

#[test]
fn invalid_context_params_are_typed_errors() {
    let model = moe();
    for params in [
        small_params().with_n_threads(0),
        small_params().with_n_batch(0),
        small_params().with_n_seq_max(100_000),
    ] {
        assert!(matches!(
            Context::new(model, &params),
            Err(ContextError::InvalidParams(_))
        ));
    }
    let mut ctx = small_ctx(model);
    assert!(ctx.set_n_threads(0, 1).is_err());
    ctx.set_n_threads(1, 2).unwrap();
    assert_eq!((ctx.n_threads(), ctx.n_threads_batch()), (1, 2));
}

#[test]
fn embeddings_per_token_and_pooled() {
    let model = moe();
    let tokens = prompt_tokens();
    let batch = {
        let mut b = Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap();
        for i in 0..tokens.len() {
            b.set_output(i, Output::Yes);
        }
        b
    };
    let mut ctx = Context::new(
        model,
        &small_params()
            .with_embeddings(true)
            .with_pooling(PoolingType::None),
    )
    .unwrap();
    ctx.decode(&batch).unwrap();
    let e0 = ctx.embeddings(0).unwrap().to_vec();
    let e_last = ctx.embeddings(tokens.len() - 1).unwrap();
    assert_eq!(e0.len(), e_last.len());
    assert!(!e0.is_empty() && e0.iter().all(|x| x.is_finite()));
    assert_ne!(e0.as_slice(), e_last);
    assert!(ctx.embeddings_seq(SeqId(0)).is_err());

    let mut pooled = Context::new(
        model,
        &small_params()
            .with_embeddings(true)
            .with_pooling(PoolingType::Mean),
    )
    .unwrap();
    assert_eq!(pooled.pooling_type(), PoolingType::Mean);
    pooled.decode(&batch).unwrap();
    let mean = pooled.embeddings_seq(SeqId(0)).unwrap();
    assert_eq!(mean.len(), e0.len());
    assert!(mean.iter().all(|x| x.is_finite()));
    assert!(pooled.embeddings(0).is_err());
    assert!(pooled.embeddings_seq(SeqId(1)).is_err());
}

/// Largest absolute difference between two rows of the same length.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// With embeddings on, llama.cpp outputs every token whatever the batch's flags, so a
/// last-token-only batch has one row per token: `logits(last)` and `embeddings(last)`
/// must read the last token's row, not the first one.
#[test]
fn an_embeddings_context_reads_the_rows_llama_cpp_wrote() {
    let model = moe();
    let tokens = prompt_tokens();
    let last = tokens.len() - 1;
    // Only the last token is flagged.
    let batch = Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap();
    let embeddings_params = small_params()
        .with_embeddings(true)
        .with_pooling(PoolingType::None);

    let mut plain = small_ctx(model);
    plain.decode(&batch).unwrap();
    let expected = plain.logits(last).unwrap().to_vec();

    let mut ctx = Context::new(model, &embeddings_params).unwrap();
    ctx.decode(&batch).unwrap();
    let got = ctx.logits(last).unwrap();
    // Other batch shapes may sum in another order: allow rounding, not another row.
    assert!(
        max_abs_diff(got, &expected) < 1e-3,
        "logits(last) of an embeddings context is not the last token's row (max diff {})",
        max_abs_diff(got, &expected)
    );
    assert_eq!(argmax(got), argmax(&expected));
    assert!(
        max_abs_diff(ctx.logits(0).unwrap(), &expected) > 1e-2,
        "the first and last rows must differ for this test to mean anything"
    );
    assert_eq!(
        ctx.output_indices().collect::<Vec<_>>(),
        (0..tokens.len()).collect::<Vec<_>>(),
        "llama.cpp outputs every token of an embeddings context"
    );

    // The same rows as a batch that flags every token itself.
    let mut flagged = batch.clone();
    for i in 0..tokens.len() {
        flagged.set_output(i, Output::Yes);
    }
    let mut reference = Context::new(model, &embeddings_params).unwrap();
    reference.decode(&flagged).unwrap();
    for i in [0, last] {
        let want = reference.embeddings(i).unwrap();
        let have = ctx.embeddings(i).unwrap();
        assert!(
            max_abs_diff(have, want) < 1e-4,
            "embeddings({i}) is not token {i}'s row"
        );
    }
    assert!(max_abs_diff(ctx.embeddings(0).unwrap(), ctx.embeddings(last).unwrap()) > 1e-3);
}

/// `generate` samples from the last token's row on an embeddings context too.
#[test]
fn generate_on_an_embeddings_context_matches_a_plain_one() {
    let model = moe();
    let prompt = "The quick brown fox jumps over the lazy dog.";
    let plain = ctx_support::greedy_in_context(model, &small_params(), prompt, 6);
    let embeddings = ctx_support::greedy_in_context(
        model,
        &small_params()
            .with_embeddings(true)
            .with_pooling(PoolingType::None),
        prompt,
        6,
    );
    assert_eq!(embeddings, plain);
}

/// A model loaded without its weights (vocab-only, or `no_alloc` as the dry run does)
/// refuses contexts: llama.cpp would decode into empty buffers.
#[test]
fn models_without_weights_refuse_contexts() {
    let path = ctx_support::write_tiny(Arch::Qwen3Moe);
    let cpu = ModelParams::default().with_n_gpu_layers(0);
    for (params, mode) in [
        (
            cpu.clone().with_vocab_only(true),
            WeightlessModel::VocabOnly,
        ),
        (cpu.clone().with_no_alloc(true), WeightlessModel::NoAlloc),
        (
            cpu.clone().with_vocab_only(true).with_no_alloc(true),
            WeightlessModel::VocabOnly,
        ),
    ] {
        let model = Model::load(&Backend::init(), &path, &params).unwrap();
        match Context::new(&model, &small_params()) {
            Err(ContextError::NoWeights(m)) => assert_eq!(m, mode, "{params:?}"),
            Err(e) => panic!("{params:?}: {e}"),
            Ok(_) => panic!("a context on a model loaded with {mode} (no weights)"),
        }
        // The vocabulary still works.
        assert!(!model
            .vocab()
            .tokenize("fox", AddSpecial::No, ParseSpecial::No)
            .unwrap()
            .is_empty());
    }
    // The dry run still measures through its own no_alloc context.
    let dry = Model::dry_run(&Backend::init(), &path, &cpu, &small_params()).unwrap();
    assert!(!dry.by_location().is_empty());
    let _ = std::fs::remove_file(&path);
}

/// llama.cpp asserts (aborts the process) on these parameters in its context
/// constructor or its reserve pass; `Context::new` refuses them with a typed error.
#[test]
fn parameters_llama_cpp_aborts_on_are_typed_errors() {
    let model = moe();
    let refused = [
        // `moe_server --parallel 256 -b 64 -ub 64`: llama.cpp reserves one output per
        // sequence, which must fit in a batch (GGML_ASSERT(n_outputs_max <= ...)).
        small_params()
            .with_n_seq_max(256)
            .with_n_batch(64)
            .with_n_ubatch(64),
        // The batch is capped at n_ctx (4 here), below the 8 sequences.
        small_params().with_n_ctx(4).with_n_seq_max(8),
        // Mean pooling over 3 sequences with a 16-token micro-batch: the reserve graph
        // rounds its tokens up to 18 but not its 16 outputs (GGML_ASSERT(ggml_can_mul_mat)).
        small_params()
            .with_n_ubatch(16)
            .with_n_seq_max(3)
            .with_embeddings(true)
            .with_pooling(PoolingType::Mean),
        // More threads than ggml's GGML_MAX_N_THREADS (100,000 crashed the decode).
        small_params().with_n_threads(513),
        small_params()
            .with_n_threads(1)
            .with_n_threads_batch(100_000),
        // A size whose padding wraps u32.
        small_params().with_n_ctx(u32::MAX).with_kv_unified(true),
    ];
    for params in refused {
        match Context::new(model, &params) {
            Err(ContextError::InvalidParams(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("{params:?}: expected InvalidParams, got {e}"),
            Ok(_) => panic!("{params:?} was accepted"),
        }
    }

    // The boundaries are accepted, and work.
    let tokens = prompt_tokens();
    let accepted = [
        small_params()
            .with_n_seq_max(64)
            .with_n_batch(64)
            .with_n_ubatch(64),
        small_params()
            .with_n_ubatch(16)
            .with_n_seq_max(4)
            .with_embeddings(true)
            .with_pooling(PoolingType::Mean),
    ];
    for params in accepted {
        let mut ctx = Context::new(model, &params).unwrap_or_else(|e| panic!("{params:?}: {e}"));
        ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
            .unwrap();
        if params.embeddings() {
            assert!(ctx.embeddings_seq(SeqId(0)).is_ok());
        } else {
            assert!(ctx.logits(tokens.len() - 1).is_ok());
        }
    }
    let mut ctx = small_ctx(model);
    assert!(matches!(
        ctx.set_n_threads(513, 1),
        Err(ContextError::InvalidParams(_))
    ));
    assert_eq!(ctx.n_threads(), 1);
}

/// Turning mean-pooled embeddings on later must not get past what `Context::new`
/// refuses: llama.cpp reserves its graphs again after a shift, and aborts there.
#[test]
fn turning_on_embeddings_llama_cpp_would_abort_on_is_refused() {
    let model = moe();
    let params = small_params()
        .with_n_ubatch(16)
        .with_n_seq_max(3)
        .with_pooling(PoolingType::Mean);
    let mut ctx = Context::new(model, &params).unwrap();
    assert!(matches!(
        ctx.set_embeddings(true),
        Err(ContextError::InvalidParams(_))
    ));
    // Nothing changed: a shift and a decode still work, with logits.
    let tokens = prompt_tokens();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    ctx.seq_add(SeqId(0), .., 1).unwrap();
    let next = Pos(tokens.len() as i32 + 1);
    ctx.decode(&Batch::from_tokens(&[Token(7)], next, SeqId(0)).unwrap())
        .unwrap();
    assert!(ctx.logits(0).is_ok());
    // Where the sizes allow it, embeddings turn on.
    let mut fits = Context::new(model, &params.clone().with_n_seq_max(4)).unwrap();
    fits.set_embeddings(true).unwrap();
    fits.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    assert!(fits.embeddings_seq(SeqId(0)).is_ok());
}

/// The tiny dense model with 64-wide heads, which llama.cpp rotates when it shifts a
/// quantised K cache.
fn wide_heads() -> Model {
    let mut h = Hparams::preset(Arch::Llama, Preset::Tiny);
    h.n_embd = 128;
    h.n_head = 2;
    h.n_head_kv = 1;
    h.head_dim = 64;
    let path = std::env::temp_dir().join(format!(
        "llama-cpp-moe-wide-heads-{}.gguf",
        std::process::id()
    ));
    SynthSpec::new(Arch::Llama, Preset::Tiny)
        .hparams(h)
        .seed(7)
        .write(&path)
        .unwrap();
    let model = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    model
}

/// Decodes the prompt in sequence 0, then tries to shift it by one position and decode
/// a token after it.
fn shift_and_decode(model: &Model, type_k: KvCacheType) -> Result<(), MemoryError> {
    let params = small_params()
        .with_flash_attention(FlashAttention::Enabled)
        .with_kv_cache_type(type_k, KvCacheType::F16);
    let mut ctx = Context::new(model, &params).unwrap_or_else(|e| panic!("{type_k:?}: {e}"));
    let tokens = prompt_tokens();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    ctx.seq_add(SeqId(0), .., 1)?;
    let next = Pos(tokens.len() as i32 + 1);
    ctx.decode(&Batch::from_tokens(&[Token(7)], next, SeqId(0)).unwrap())
        .unwrap();
    assert!(ctx.logits(0).unwrap().iter().all(|x| x.is_finite()));
    Ok(())
}

/// llama.cpp's K-shift crashes on a BF16 K cache (its CPU RoPE takes F32 and F16 only)
/// and on a quantised one whose heads it does not rotate (not a multiple of 64 wide: it
/// dereferences a NULL rotation). `seq_add` refuses those shifts; the others work.
#[test]
fn shifts_llama_cpp_would_crash_on_are_refused() {
    let model = moe(); // 32-wide heads
    for type_k in [KvCacheType::BF16, KvCacheType::Q8_0, KvCacheType::Q4_0] {
        assert_eq!(
            shift_and_decode(model, type_k),
            Err(MemoryError::ShiftUnsupported),
            "{type_k:?}"
        );
    }
    for type_k in [KvCacheType::F16, KvCacheType::F32] {
        shift_and_decode(model, type_k).unwrap();
    }
    let wide = wide_heads();
    for type_k in [KvCacheType::Q8_0, KvCacheType::Q4_0, KvCacheType::F16] {
        shift_and_decode(&wide, type_k).unwrap_or_else(|e| panic!("{type_k:?}: {e}"));
    }
    // The same words the synthetic vocabulary tokenizes for both models.
    assert_eq!(wide.n_vocab(), model.n_vocab());
}
