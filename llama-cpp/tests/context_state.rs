//! Context and sequence state: save to memory and to files, restore into new contexts
//! and other sequences, continue with exactly the tokens of an uninterrupted run; bad
//! states are typed errors.

mod ctx_support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use ctx_support::{dense, load_tiny, small_params};
use llama_cpp_moe::context::{SeqStateScope, StateError};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{
    Backend, Batch, Context, ContextParams, GenerateParams, Model, ModelParams, Pos,
    SamplerBuilder, SeqId, Token,
};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};

const PROMPT: &str = "The capital of France is Paris. The capital of Germany is";
const N_GEN: usize = 12;

/// The real model, loaded once; `None` (after a visible SKIPPED) without
/// `LLAMA_CPP_MOE_SMOLLM2`, except under `CI=true`, where a skip would hide the test.
fn smollm2() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let Some(path) = std::env::var_os("LLAMA_CPP_MOE_SMOLLM2") else {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "CI=true but LLAMA_CPP_MOE_SMOLLM2 is unset"
                );
                let _ = writeln!(std::io::stderr(), "SKIPPED: set LLAMA_CPP_MOE_SMOLLM2");
                return None;
            };
            let params = ModelParams::default().with_n_gpu_layers(0);
            Some(Model::load(&Backend::init(), path, &params).expect("load SmolLM2"))
        })
        .as_ref()
}

fn params(n_seq_max: u32) -> ContextParams {
    small_params()
        .with_n_ctx(256 * n_seq_max)
        .with_n_seq_max(n_seq_max)
        .with_n_threads(2)
        .with_n_threads_batch(2)
}

/// The prompt split into the part decoded before saving and its last token, decoded
/// after restoring (the state holds no logits).
fn prompt(model: &Model) -> (Vec<Token>, Token) {
    let mut tokens = model
        .vocab()
        .tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    let last = tokens.pop().unwrap();
    assert!(tokens.len() > 4);
    (tokens, last)
}

fn decode_body(ctx: &mut Context<'_>, body: &[Token], seq: SeqId) {
    ctx.decode(&Batch::from_tokens(body, Pos(0), seq).unwrap())
        .unwrap();
}

/// `N_GEN` greedy tokens after `last`, appended to what `seq` holds.
fn continue_greedy(ctx: &mut Context<'_>, last: Token, seq: SeqId) -> Vec<Token> {
    let mut sampler = SamplerBuilder::new().greedy(&ctx.vocab()).unwrap();
    ctx.complete(
        &mut sampler,
        &[last],
        GenerateParams::default()
            .with_max_tokens(N_GEN)
            .with_stop_at_eog(false)
            .with_seq(seq),
    )
    .unwrap()
    .tokens
}

/// The uninterrupted run: the same decodes in one context of the same geometry.
fn uninterrupted(model: &Model, n_seq_max: u32, seq: SeqId) -> Vec<Token> {
    let (body, last) = prompt(model);
    let mut ctx = Context::new(model, &params(n_seq_max)).unwrap();
    decode_body(&mut ctx, &body, seq);
    let tokens = continue_greedy(&mut ctx, last, seq);
    assert_eq!(tokens.len(), N_GEN);
    tokens
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llama-cpp-moe-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whole-context state through memory and through a file, restored into new contexts:
/// the continuation is token for token the uninterrupted one (the done-when of issue 19).
#[test]
fn smollm2_context_state_restores_into_a_new_context_and_continues_identically() {
    let Some(model) = smollm2() else { return };
    let expected = uninterrupted(model, 1, SeqId(0));
    let (body, last) = prompt(model);

    let mut ctx = Context::new(model, &params(1)).unwrap();
    decode_body(&mut ctx, &body, SeqId(0));
    let state = ctx.state_save().unwrap();
    assert_eq!(state.len(), ctx.state_size());
    let file = temp_path("smollm2-context.state");
    ctx.state_save_file(&file, &body).unwrap();
    drop(ctx);

    let mut from_memory = Context::new(model, &params(1)).unwrap();
    from_memory.state_load(&state).unwrap();
    assert_eq!(
        from_memory.seq_pos_max(SeqId(0)).unwrap(),
        Some(Pos(body.len() as i32 - 1))
    );
    assert_eq!(continue_greedy(&mut from_memory, last, SeqId(0)), expected);

    let mut from_file = Context::new(model, &params(1)).unwrap();
    assert_eq!(from_file.state_load_file(&file).unwrap(), body);
    assert_eq!(continue_greedy(&mut from_file, last, SeqId(0)), expected);

    // Restoring replaces what the context held: a context that decoded something else
    // first continues the same way.
    let mut busy = Context::new(model, &params(1)).unwrap();
    decode_body(&mut busy, &body[..3], SeqId(0));
    busy.state_load(&state).unwrap();
    assert_eq!(continue_greedy(&mut busy, last, SeqId(0)), expected);
    let _ = std::fs::remove_file(file);
}

/// Sequence 0 of one context saved (memory and file), restored into sequence 1 of
/// another whose sequence 0 holds other tokens: sequence 1 continues as an
/// uninterrupted run in sequence 1 would, and sequence 0 is untouched.
#[test]
fn smollm2_sequence_state_moves_to_another_sequence_of_another_context() {
    let Some(model) = smollm2() else { return };
    let expected = uninterrupted(model, 2, SeqId(1));
    let (body, last) = prompt(model);

    let mut src = Context::new(model, &params(2)).unwrap();
    decode_body(&mut src, &body, SeqId(0));
    let state = src.seq_state_save(SeqId(0), SeqStateScope::All).unwrap();
    assert_eq!(
        state.len(),
        src.seq_state_size(SeqId(0), SeqStateScope::All).unwrap()
    );
    let file = temp_path("smollm2-seq.state");
    let written = src.seq_state_save_file(&file, SeqId(0), &body).unwrap();
    assert_eq!(written, std::fs::metadata(&file).unwrap().len());
    drop(src);

    for from_file in [false, true] {
        let mut dst = Context::new(model, &params(2)).unwrap();
        decode_body(&mut dst, &body[..2], SeqId(0));
        if from_file {
            assert_eq!(dst.seq_state_load_file(&file, SeqId(1)).unwrap(), body);
        } else {
            dst.seq_state_load(&state, SeqId(1), SeqStateScope::All)
                .unwrap();
        }
        assert_eq!(dst.seq_pos_max(SeqId(0)).unwrap(), Some(Pos(1)));
        assert_eq!(
            dst.seq_pos_max(SeqId(1)).unwrap(),
            Some(Pos(body.len() as i32 - 1))
        );
        assert_eq!(
            continue_greedy(&mut dst, last, SeqId(1)),
            expected,
            "from file: {from_file}"
        );
        assert_eq!(dst.seq_pos_max(SeqId(0)).unwrap(), Some(Pos(1)));
    }
    let _ = std::fs::remove_file(file);
}

/// A device-kept sequence state goes back into its own context (after the memory was
/// cleared) and continues identically; a superseded one, or one of another context, is
/// refused where llama.cpp would abort.
#[test]
fn device_sequence_state_restores_in_its_context_and_stale_ones_are_refused() {
    let model = dense();
    let expected = uninterrupted(model, 2, SeqId(1));
    let (body, last) = prompt(model);
    let mut ctx = Context::new(model, &params(2)).unwrap();
    decode_body(&mut ctx, &body, SeqId(0));
    let first = ctx
        .seq_state_save_on_device(SeqId(0), SeqStateScope::All)
        .unwrap();
    assert_eq!(first.seq(), SeqId(0));
    let state = ctx
        .seq_state_save_on_device(SeqId(0), SeqStateScope::All)
        .unwrap();
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Zero)
        .unwrap();
    assert!(matches!(
        ctx.seq_state_load_on_device(&first, SeqId(1)),
        Err(StateError::StaleDeviceState { seq: SeqId(0) })
    ));
    ctx.seq_state_load_on_device(&state, SeqId(1)).unwrap();
    assert_eq!(continue_greedy(&mut ctx, last, SeqId(1)), expected);

    let mut other = Context::new(model, &params(2)).unwrap();
    assert!(matches!(
        other.seq_state_load_on_device(&state, SeqId(0)),
        Err(StateError::StaleDeviceState { .. })
    ));
    assert!(matches!(
        other.seq_state_load_on_device(&state, SeqId(2)),
        Err(StateError::InvalidSeqId { .. })
    ));
}

/// A state restores on the synthetic model too, so the error tests below start from a
/// state that loads.
fn dense_state() -> (Vec<u8>, Vec<u8>) {
    let model = dense();
    let (body, _) = prompt(model);
    let mut ctx = Context::new(model, &params(2)).unwrap();
    decode_body(&mut ctx, &body, SeqId(0));
    let whole = ctx.state_save().unwrap();
    let seq = ctx.seq_state_save(SeqId(0), SeqStateScope::All).unwrap();
    let mut check = Context::new(model, &params(2)).unwrap();
    check.state_load(&whole).unwrap();
    check
        .seq_state_load(&seq, SeqId(1), SeqStateScope::All)
        .unwrap();
    (whole, seq)
}

/// After a refused load the context still decodes.
fn still_decodes(ctx: &mut Context<'_>) {
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
        .unwrap();
    ctx.decode(&Batch::from_tokens(&[Token(1), Token(2)], Pos(0), SeqId(0)).unwrap())
        .unwrap();
}

#[test]
fn truncated_and_garbage_context_states_are_typed_errors() {
    let model = dense();
    let (whole, _) = dense_state();
    let mut ctx = Context::new(model, &params(2)).unwrap();
    let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 5, 9, 10, 12, 20, 40];
    cuts.extend([whole.len() / 3, whole.len() / 2, whole.len() - 1]);
    for cut in cuts {
        let err = ctx.state_load(&whole[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Invalid { .. } | StateError::Rejected { .. }
            ),
            "cut at {cut}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
        still_decodes(&mut ctx);
    }
    // Trailing bytes: the state itself loads, the extra bytes are reported.
    let mut longer = whole.clone();
    longer.extend([0u8; 7]);
    assert!(matches!(
        ctx.state_load(&longer),
        Err(StateError::Invalid { ref reason, .. }) if reason.contains("7 bytes follow")
    ));
    // An architecture name as long as the u32 allows: refused before llama.cpp
    // allocates it.
    let mut huge = whole.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(matches!(
        ctx.state_load(&huge),
        Err(StateError::Invalid { .. })
    ));
    let mut renamed = whole.clone();
    renamed[4] = b'x'; // "llama" -> "xlama"
    match ctx.state_load(&renamed) {
        Err(StateError::WrongModel { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("llama", "xlama"));
        }
        other => panic!("{other:?}"),
    }
    // Every byte after the header flipped in turn (a sample of them): typed errors or a
    // load, never an abort; the context still decodes.
    for i in (4..whole.len()).step_by(whole.len() / 97 + 1) {
        let mut bad = whole.clone();
        bad[i] ^= 0xff;
        if let Err(e) = ctx.state_load(&bad) {
            assert!(!e.to_string().is_empty());
        }
        still_decodes(&mut ctx);
    }
}

#[test]
fn truncated_and_garbage_sequence_states_are_typed_errors() {
    let model = dense();
    let (_, seq) = dense_state();
    let mut ctx = Context::new(model, &params(2)).unwrap();
    for cut in [0, 3, 4, 8, 12, 16, seq.len() / 2, seq.len() - 1] {
        let err = ctx
            .seq_state_load(&seq[..cut], SeqId(1), SeqStateScope::All)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Invalid { .. } | StateError::Rejected { .. }
            ),
            "cut at {cut}: {err:?}"
        );
        still_decodes(&mut ctx);
    }
    let mut tagged = seq.clone();
    tagged[0] ^= 1;
    assert!(matches!(
        ctx.seq_state_load(&tagged, SeqId(0), SeqStateScope::All),
        Err(StateError::Invalid { ref reason, .. }) if reason.contains("tag")
    ));
    for dest in [SeqId(-1), SeqId(2), SeqId(i32::MAX)] {
        assert!(matches!(
            ctx.seq_state_load(&seq, dest, SeqStateScope::All),
            Err(StateError::InvalidSeqId { seq, n_seq_max: 2 }) if seq == dest
        ));
        assert!(matches!(
            ctx.seq_state_save(dest, SeqStateScope::All),
            Err(StateError::InvalidSeqId { .. })
        ));
    }
    for i in (8..seq.len()).step_by(seq.len() / 97 + 1) {
        let mut bad = seq.clone();
        bad[i] ^= 0xff;
        if let Err(e) = ctx.seq_state_load(&bad, SeqId(1), SeqStateScope::All) {
            assert!(!e.to_string().is_empty());
        }
        still_decodes(&mut ctx);
    }
}

/// States of other models: another architecture (named in the error), and the same
/// architecture with another shape (llama.cpp's own checks refuse it).
#[test]
fn states_of_other_models_are_typed_errors() {
    let (whole, seq) = dense_state();
    let moe = load_tiny(Arch::Qwen3Moe);
    let mut ctx = Context::new(&moe, &params(2)).unwrap();
    match ctx.state_load(&whole) {
        Err(StateError::WrongModel { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("qwen3moe", "llama"));
        }
        other => panic!("{other:?}"),
    }
    let err = ctx
        .seq_state_load(&seq, SeqId(0), SeqStateScope::All)
        .unwrap_err();
    assert!(matches!(err, StateError::Rejected { .. }), "{err:?}");
    still_decodes(&mut ctx);

    let mut h = Hparams::preset(Arch::Llama, Preset::Tiny);
    h.n_layer += 1;
    let path = temp_path("llama-deeper.gguf");
    SynthSpec::new(Arch::Llama, Preset::Tiny)
        .hparams(h)
        .seed(7)
        .write(&path)
        .unwrap();
    let deeper = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let mut ctx = Context::new(&deeper, &params(2)).unwrap();
    let err = ctx.state_load(&whole).unwrap_err();
    assert!(matches!(err, StateError::Rejected { .. }), "{err:?}");
    let err = ctx
        .seq_state_load(&seq, SeqId(1), SeqStateScope::All)
        .unwrap_err();
    assert!(matches!(err, StateError::Rejected { .. }), "{err:?}");
    still_decodes(&mut ctx);
}

#[test]
fn bad_state_files_are_typed_errors() {
    let model = dense();
    let (body, _) = prompt(model);
    let mut ctx = Context::new(model, &params(2)).unwrap();
    decode_body(&mut ctx, &body, SeqId(0));
    let whole_file = temp_path("dense-context.state");
    let seq_file = temp_path("dense-seq.state");
    ctx.state_save_file(&whole_file, &body).unwrap();
    ctx.seq_state_save_file(&seq_file, SeqId(0), &body).unwrap();
    let whole = std::fs::read(&whole_file).unwrap();
    let seq = std::fs::read(&seq_file).unwrap();
    assert_eq!(ctx.state_load_file(&whole_file).unwrap(), body);
    assert_eq!(ctx.seq_state_load_file(&seq_file, SeqId(1)).unwrap(), body);

    let missing = temp_path("no-such.state");
    assert!(matches!(
        ctx.state_load_file(&missing),
        Err(StateError::Io { .. })
    ));
    assert!(matches!(
        ctx.seq_state_load_file(&missing, SeqId(0)),
        Err(StateError::Io { .. })
    ));
    assert!(matches!(
        ctx.state_save_file("a\0b", &body),
        Err(StateError::Path(_))
    ));

    let bad = temp_path("bad.state");
    let is_typed = |e: &StateError| {
        matches!(
            e,
            StateError::Invalid { .. }
                | StateError::Rejected { .. }
                | StateError::WrongModel { .. }
        )
    };
    // Each format's own file, cut short, with its token count raised beyond the file,
    // and the other format's file.
    for (name, bytes, seq_kind) in [("context", &whole, false), ("sequence", &seq, true)] {
        let load = |ctx: &mut Context<'_>| {
            if seq_kind {
                ctx.seq_state_load_file(&bad, SeqId(1))
            } else {
                ctx.state_load_file(&bad)
            }
        };
        for cut in [0, 4, 11, 12, 13, 12 + 4 * body.len() + 2, bytes.len() - 1] {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let err = load(&mut ctx).unwrap_err();
            assert!(is_typed(&err), "{name} cut at {cut}: {err:?}");
            still_decodes(&mut ctx);
        }
        let mut more_tokens = bytes.clone();
        more_tokens[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        std::fs::write(&bad, &more_tokens).unwrap();
        match load(&mut ctx) {
            Err(StateError::Invalid { reason, .. }) => {
                assert!(reason.contains("4294967295 tokens"), "{reason}")
            }
            other => panic!("{name}: {other:?}"),
        }
        let mut version = bytes.clone();
        version[4] ^= 0x40;
        std::fs::write(&bad, &version).unwrap();
        assert!(matches!(load(&mut ctx), Err(StateError::Invalid { .. })));
    }
    std::fs::write(&bad, &seq).unwrap();
    assert!(matches!(
        ctx.state_load_file(&bad),
        Err(StateError::Invalid { ref reason, .. }) if reason.contains("magic")
    ));
    std::fs::write(&bad, &whole).unwrap();
    assert!(matches!(
        ctx.seq_state_load_file(&bad, SeqId(0)),
        Err(StateError::Invalid { ref reason, .. }) if reason.contains("magic")
    ));
    let mut huge_arch = whole.clone();
    let at = 12 + 4 * body.len();
    huge_arch[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_ne_bytes());
    std::fs::write(&bad, &huge_arch).unwrap();
    assert!(matches!(
        ctx.state_load_file(&bad),
        Err(StateError::Invalid { .. })
    ));
    for f in [whole_file, seq_file, bad] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn state_errors_convert_into_the_crate_error() {
    let err: llama_cpp_moe::Error = StateError::StaleDeviceState { seq: SeqId(3) }.into();
    assert!(matches!(
        err,
        llama_cpp_moe::Error::State(StateError::StaleDeviceState { .. })
    ));
    assert_eq!(
        err.to_string(),
        "the device state of sequence 3 is not the latest one saved in this context"
    );
    let file = StateError::Io {
        path: "s.state".into(),
        source: std::io::Error::other("gone"),
    };
    assert_eq!(
        llama_cpp_moe::ErrorChain(&file).to_string(),
        "reading state file s.state: gone"
    );
}

/// A cell at a negative position: llama.cpp stores it without complaint and the
/// sequence then counts as starting below 0 (a cell at -1 even counts as empty while it
/// belongs to the sequence). Refused before llama.cpp reads it, the memory unchanged.
#[test]
fn states_with_negative_positions_are_refused() {
    let model = dense();
    let (whole, seq) = dense_state();
    let mut ctx = Context::new(model, &params(2)).unwrap();
    ctx.state_load(&whole).unwrap();
    let before = ctx.seq_pos_max(SeqId(0)).unwrap();
    assert!(before.is_some());
    // Context state: the architecture name, the stream count and the first stream's
    // cell count, then 12 bytes per cell (position, sequence count, sequence).
    let whole_cells = 4 + 5 + 4 + 4;
    // Sequence state: tag, sequence id, stream count, cell count, then the cells.
    let seq_cells = 4 + 4 + 4 + 4;
    for (pos, cell) in [(-1i32, 0usize), (-5, 1), (i32::MIN, 7)] {
        let mut bad = whole.clone();
        let at = whole_cells + cell * 12;
        bad[at..at + 4].copy_from_slice(&pos.to_ne_bytes());
        match ctx.state_load(&bad) {
            Err(StateError::Invalid { reason, .. }) => {
                assert!(reason.contains("negative position"), "{reason}")
            }
            other => panic!("position {pos}: {other:?}"),
        }
        assert_eq!(ctx.seq_pos_max(SeqId(0)).unwrap(), before);
        assert_eq!(ctx.seq_pos_min(SeqId(0)).unwrap(), Some(Pos(0)));

        let mut bad = seq.clone();
        let at = seq_cells + cell * 12;
        bad[at..at + 4].copy_from_slice(&pos.to_ne_bytes());
        match ctx.seq_state_load(&bad, SeqId(1), SeqStateScope::All) {
            Err(StateError::Invalid { reason, .. }) => {
                assert!(reason.contains("negative position"), "{reason}")
            }
            other => panic!("position {pos}: {other:?}"),
        }
        assert_eq!(ctx.seq_pos_min(SeqId(0)).unwrap(), Some(Pos(0)));
    }
}
