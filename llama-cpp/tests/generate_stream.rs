//! Generation helpers: the streaming iterator and `complete`, with real counts.

mod ctx_support;

use ctx_support::{moe, small_ctx, small_params};
use llama_cpp_moe::generate::{GenerateError, StopReason};
use llama_cpp_moe::{Context, GenerateParams, SamplerBuilder, Token, Utf8Decoder};

fn prompt() -> Vec<Token> {
    moe()
        .vocab()
        .tokenize("A mixture of experts routes every token", true, false)
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
        .map(|&t| dec.push(&vocab.token_to_bytes(t, false).unwrap()))
        .collect();
    expected.push_str(&dec.finish());
    assert_eq!(text, expected);

    // Prompt + all generated tokens but the last are in memory.
    assert_eq!(
        ctx.seq_pos_max(0).unwrap(),
        Some((prompt.len() + tokens.len() - 2) as i32)
    );
}

#[test]
fn complete_matches_the_stream_and_continues_the_sequence() {
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

    // A second call continues after the sequence's last position.
    let before = ctx.seq_pos_max(0).unwrap().unwrap();
    let follow = ctx
        .complete(&mut sampler, &out.tokens[5..], params)
        .unwrap();
    assert_eq!(follow.stats.prompt_tokens, 1);
    assert_eq!(
        ctx.seq_pos_max(0).unwrap(),
        Some(before + 1 + follow.tokens.len() as i32 - 1)
    );
}

#[test]
fn long_prompts_are_decoded_in_batches() {
    let model = moe();
    let vocab = model.vocab();
    let mut ctx = Context::new(model, &small_params().with_n_batch(8).with_n_ubatch(8)).unwrap();
    let long = vocab
        .tokenize(&"the of and to in is ".repeat(6), true, false)
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
    assert_eq!(out.tokens.len(), 4);

    // An end-of-generation token forced by the grammar ends it, uncounted.
    let mut yes = SamplerBuilder::new()
        .grammar(r#"root ::= "yes""#, "root")
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
