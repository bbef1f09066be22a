//! Generation helpers: the streaming iterator and `complete`, with real counts.

mod ctx_support;

use ctx_support::{moe, small_ctx, small_params};
use llama_cpp_moe::generate::{GenerateError, StopReason};
use llama_cpp_moe::sampler::Penalties;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial, RenderSpecial};
use llama_cpp_moe::{
    Batch, Context, GenerateParams, Output, Pos, SamplerBuilder, SeqId, Token, Utf8Decoder,
};

fn prompt() -> Vec<Token> {
    moe()
        .vocab()
        .tokenize(
            "A mixture of experts routes every token",
            AddSpecial::Yes,
            ParseSpecial::No,
        )
        .unwrap()
}

#[test]
fn stream_yields_timed_tokens_whose_text_is_the_detokenized_output() {
    let model = moe();
    let vocab = model.vocab();
    let mut ctx = small_ctx(model);
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();
    let prompt = prompt();
    let params = GenerateParams::default()
        .with_max_tokens(10)
        .with_stop_at_eog(false);
    let mut stream = ctx.generate(&mut sampler, &prompt, params);
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut last_since_start = std::time::Duration::ZERO;
    for item in &mut stream {
        let item = item.unwrap();
        assert!(item.timing.since_start >= last_since_start);
        assert!(item.timing.step <= item.timing.since_start);
        last_since_start = item.timing.since_start;
        tokens.push(item.token);
        text.push_str(&item.text);
    }
    text.push_str(&stream.flush());
    let stats = stream.stats().clone();
    assert_eq!(tokens.len(), 10);
    assert_eq!(stats.generated_tokens, 10);
    assert_eq!(stats.prompt_tokens, prompt.len());
    assert_eq!(stats.stop_reason, Some(StopReason::MaxTokens));
    assert!(stats.ttft.is_some());
    assert!(stats.load_time.is_some());
    assert!(stats.prefill_tokens_per_second().is_some());
    assert!(stats.decode_tokens_per_second().is_some());

    // The streamed text is exactly what the tokens decode to, piece by piece.
    let mut dec = Utf8Decoder::new();
    let mut expected: String = tokens
        .iter()
        .map(|&t| dec.push(&vocab.token_to_bytes(t, RenderSpecial::No).unwrap()))
        .collect();
    expected.push_str(&dec.finish());
    assert_eq!(text, expected);

    // The prompt and every generated token are in memory.
    assert_eq!(
        ctx.seq_pos_max(SeqId(0)).unwrap(),
        Some(Pos((prompt.len() + tokens.len() - 1) as i32))
    );
}

#[test]
fn complete_matches_the_stream() {
    let model = moe();
    let vocab = model.vocab();
    let params = GenerateParams::default()
        .with_max_tokens(6)
        .with_stop_at_eog(false);

    let mut ctx = small_ctx(model);
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();
    let out = ctx
        .complete(&mut sampler, &prompt(), params.clone())
        .unwrap();
    assert_eq!(out.tokens.len(), 6);
    assert_eq!(out.stats.generated_tokens, 6);

    let mut ctx2 = small_ctx(model);
    let mut sampler2 = SamplerBuilder::new().greedy(&vocab).unwrap();
    let streamed: Vec<Token> = ctx2
        .generate(&mut sampler2, &prompt(), params.clone())
        .map(|t| t.unwrap().token)
        .collect();
    assert_eq!(streamed, out.tokens);
}

fn greedy_complete(ctx: &mut Context<'_>, prompt: &[Token], n: usize) -> Vec<Token> {
    let vocab = ctx.vocab();
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();
    let params = GenerateParams::default()
        .with_max_tokens(n)
        .with_stop_at_eog(false);
    let out = ctx.complete(&mut sampler, prompt, params).unwrap();
    assert_eq!(out.tokens.len(), n);
    out.tokens
}

#[test]
fn two_calls_continue_exactly_like_one_longer_generation() {
    let model = moe();
    let prompt = prompt();
    let (n, m) = (5, 7);

    let mut one = small_ctx(model);
    let all = greedy_complete(&mut one, &prompt, n + m);
    // Not a degenerate model that repeats one token whatever the context.
    assert!(all[n..].iter().any(|t| *t != all[n - 1]), "{all:?}");

    let mut two = small_ctx(model);
    let mut split = greedy_complete(&mut two, &prompt, n);
    assert_eq!(
        two.seq_pos_max(SeqId(0)).unwrap(),
        Some(Pos((prompt.len() + n - 1) as i32)),
        "the memory holds the prompt and all {n} generated tokens"
    );
    // An empty prompt continues from the last generated token.
    split.extend(greedy_complete(&mut two, &[], m));
    assert_eq!(split, all);
    assert_eq!(
        two.seq_pos_max(SeqId(0)).unwrap(),
        one.seq_pos_max(SeqId(0)).unwrap()
    );
}

#[test]
fn a_follow_up_prompt_sees_every_generated_token() {
    let model = moe();
    let vocab = model.vocab();
    let first = prompt();
    let follow_up = vocab
        .tokenize(" and then", AddSpecial::No, ParseSpecial::No)
        .unwrap();

    let mut chat = small_ctx(model);
    let answer = greedy_complete(&mut chat, &first, 4);
    let continued = greedy_complete(&mut chat, &follow_up, 6);

    // The same conversation in one prompt on a fresh context.
    let whole: Vec<Token> = [first.as_slice(), &answer, &follow_up].concat();
    let mut fresh = small_ctx(model);
    assert_eq!(greedy_complete(&mut fresh, &whole, 6), continued);
    assert_eq!(
        chat.seq_pos_max(SeqId(0)).unwrap(),
        fresh.seq_pos_max(SeqId(0)).unwrap()
    );
}

#[test]
fn an_empty_prompt_needs_something_to_continue() {
    let model = moe();
    let mut ctx = small_ctx(model);
    let vocab = model.vocab();
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();
    let params = GenerateParams::default().with_max_tokens(2);
    // Nothing in memory.
    assert_eq!(
        ctx.complete(&mut sampler, &[], params.clone()).unwrap_err(),
        GenerateError::EmptyPrompt
    );
    // A prompt decoded by hand without output for its last token: no logits to go on.
    let p = prompt();
    let mut batch = Batch::from_tokens(&p, Pos(0), SeqId(0)).unwrap();
    batch.set_output(p.len() - 1, Output::No);
    ctx.decode(&batch).unwrap();
    assert_eq!(
        ctx.complete(&mut sampler, &[], params.clone()).unwrap_err(),
        GenerateError::EmptyPrompt
    );
    // Removing the last token moves the sequence's end: the old logits no longer apply.
    greedy_complete(&mut ctx, &[Token(10)], 1);
    let end = ctx.seq_pos_max(SeqId(0)).unwrap().unwrap();
    ctx.seq_rm(Some(SeqId(0)), end..).unwrap();
    assert_eq!(
        ctx.complete(&mut sampler, &[], params).unwrap_err(),
        GenerateError::EmptyPrompt
    );
}

#[test]
fn long_prompts_are_decoded_in_batches() {
    let model = moe();
    let vocab = model.vocab();
    let mut ctx = Context::new(model, &small_params().with_n_batch(8).with_n_ubatch(8)).unwrap();
    let long = vocab
        .tokenize(
            &"the of and to in is ".repeat(6),
            AddSpecial::Yes,
            ParseSpecial::No,
        )
        .unwrap();
    assert!(long.len() > 16);
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();
    let out = ctx
        .complete(
            &mut sampler,
            &long,
            GenerateParams::default()
                .with_max_tokens(2)
                .with_stop_at_eog(false),
        )
        .unwrap();
    assert_eq!(out.stats.prompt_tokens, long.len());
    assert_eq!(out.tokens.len(), 2);
}

#[test]
fn stop_conditions_and_errors() {
    let model = moe();
    let vocab = model.vocab();
    let mut sampler = SamplerBuilder::new().greedy(&vocab).unwrap();

    let mut ctx = small_ctx(model);
    let none = ctx
        .complete(
            &mut sampler,
            &prompt(),
            GenerateParams::default().with_max_tokens(0),
        )
        .unwrap();
    assert!(none.tokens.is_empty() && none.text.is_empty());
    assert_eq!(none.stats.stop_reason, Some(StopReason::MaxTokens));
    assert_eq!(none.stats.ttft, None);

    assert_eq!(
        ctx.complete(&mut sampler, &[], GenerateParams::default())
            .unwrap_err(),
        GenerateError::EmptyPrompt
    );

    let n_ctx = ctx.n_ctx_seq() as usize;
    let huge = vec![Token(10); n_ctx + 1];
    assert!(matches!(
        ctx.complete(&mut sampler, &huge, GenerateParams::default()),
        Err(GenerateError::PromptTooLong { .. })
    ));

    // Filling the context ends the generation cleanly.
    let nearly = vec![Token(10); n_ctx - 3];
    let out = ctx
        .complete(
            &mut sampler,
            &nearly,
            GenerateParams::default()
                .with_max_tokens(100)
                .with_stop_at_eog(false),
        )
        .unwrap();
    assert_eq!(out.stats.stop_reason, Some(StopReason::ContextFull));
    // Three tokens fill the context; a fourth has no room, so it is not yielded.
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(
        ctx.seq_pos_max(SeqId(0)).unwrap(),
        Some(Pos(n_ctx as i32 - 1))
    );

    // An end-of-generation token forced by the grammar ends it, uncounted.
    let mut yes = SamplerBuilder::new()
        .with_grammar(r#"root ::= "yes""#, "root")
        .greedy(&vocab)
        .unwrap();
    let mut ctx = small_ctx(model);
    let out = ctx
        .complete(&mut yes, &prompt(), GenerateParams::default())
        .unwrap();
    assert_eq!(out.text, "yes");
    assert_eq!(out.stats.generated_tokens, out.tokens.len());
    match out.stats.stop_reason {
        Some(StopReason::EndOfGeneration(t)) => assert!(vocab.is_eog(t)),
        other => panic!("{other:?}"),
    }
}

/// A penalty stage that remembers only the last accepted token and pushes it far down:
/// after `sample_logits` on logits that favour `token` alone, the pick differs from
/// `token` exactly when `token` is the last token the sampler accepted.
fn last_token_penalty() -> SamplerBuilder {
    SamplerBuilder::new().with_penalties(Penalties {
        last_n: 1,
        presence: 50.0,
        ..Penalties::default()
    })
}

/// Logits of `n_vocab` zeros with `favoured` at 1 and, if given, `second` at 0.5.
fn favouring(n_vocab: usize, favoured: Token, second: Option<Token>) -> Vec<f32> {
    let mut logits = vec![0.0; n_vocab];
    logits[favoured.0 as usize] = 1.0;
    if let Some(t) = second {
        logits[t.0 as usize] = 0.5;
    }
    logits
}

/// The token that found no room in the context is not accepted by the sampler: its
/// penalty history ends with the last token the caller saw.
#[test]
fn a_token_that_finds_no_room_is_not_accepted_by_the_sampler() {
    let model = moe();
    let vocab = model.vocab();
    let mut sampler = last_token_penalty().greedy(&vocab).unwrap();
    let mut ctx = small_ctx(model);
    let n_ctx = ctx.n_ctx_seq() as usize;
    let out = ctx
        .complete(
            &mut sampler,
            &vec![Token(10); n_ctx - 3],
            GenerateParams::default()
                .with_max_tokens(100)
                .with_stop_at_eog(false),
        )
        .unwrap();
    assert_eq!(out.stats.stop_reason, Some(StopReason::ContextFull));
    let last = *out.tokens.last().unwrap();
    let pick = sampler
        .sample_logits(&favouring(vocab.n_tokens(), last, None))
        .unwrap();
    assert_ne!(
        pick, last,
        "the sampler's last accepted token is not the last generated one: it accepted \
         the token that had no room"
    );
}

/// The end-of-generation token is not accepted by the sampler either.
#[test]
fn an_end_of_generation_token_is_not_accepted_by_the_sampler() {
    let model = moe();
    let vocab = model.vocab();
    let eog: Vec<Token> = (0..vocab.n_tokens() as i32)
        .map(Token)
        .filter(|&t| vocab.is_eog(t))
        .collect();
    assert!(
        eog.len() >= 2,
        "the synthetic vocabulary has eos and eot: {eog:?}"
    );
    // The grammar forces "yes" and then an end-of-generation token.
    let mut sampler = last_token_penalty()
        .with_grammar(r#"root ::= "yes""#, "root")
        .greedy(&vocab)
        .unwrap();
    let mut ctx = small_ctx(model);
    let out = ctx
        .complete(&mut sampler, &prompt(), GenerateParams::default())
        .unwrap();
    assert_eq!(out.text, "yes");
    let Some(StopReason::EndOfGeneration(end)) = out.stats.stop_reason else {
        panic!("{:?}", out.stats.stop_reason);
    };
    // The grammar is complete, so only end-of-generation tokens remain; the one that
    // ended the generation is favoured and wins unless the penalty history holds it.
    let other = *eog.iter().find(|&&t| t != end).unwrap();
    let pick = sampler
        .sample_logits(&favouring(vocab.n_tokens(), end, Some(other)))
        .unwrap();
    assert_eq!(
        pick, end,
        "the sampler accepted the end-of-generation token that stopped the generation"
    );
}
