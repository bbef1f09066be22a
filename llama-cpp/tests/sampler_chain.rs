//! Sampler chains on a synthetic model: greedy, seeded dist, every stage, grammar.

mod ctx_support;

use ctx_support::{load_tiny, moe, small_ctx};
use llama_cpp_moe::sampler::{Penalties, SampleError, SamplerError};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Batch, Context, GenerateParams, Pos, SamplerBuilder, SeqId, Token};
use llama_cpp_moe_gguf::synth::Arch;

fn decoded_ctx() -> (Context<'static>, usize) {
    let model = moe();
    let mut ctx = small_ctx(model);
    let tokens = model
        .vocab()
        .tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    (ctx, tokens.len() - 1)
}

fn generate(builder: SamplerBuilder, seed: Option<u32>, n: usize) -> Vec<Token> {
    let model = moe();
    let vocab = model.vocab();
    let mut sampler = match seed {
        Some(s) => builder.dist(&vocab, s).unwrap(),
        None => builder.greedy(&vocab).unwrap(),
    };
    let mut ctx = small_ctx(model);
    let prompt = vocab
        .tokenize("The router picks", AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    let params = GenerateParams::default()
        .with_max_tokens(n)
        .with_stop_at_eog(false);
    ctx.complete(&mut sampler, &prompt, params).unwrap().tokens
}

#[test]
fn greedy_picks_the_argmax_and_is_deterministic() {
    let (ctx, last) = decoded_ctx();
    let logits = ctx.logits(last).unwrap();
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    let mut greedy = SamplerBuilder::new().greedy(&ctx.vocab()).unwrap();
    assert_eq!(greedy.seed(), None);
    assert_eq!(greedy.sample(&ctx, last).unwrap(), Token(best as i32));

    let a = generate(SamplerBuilder::new(), None, 8);
    let b = generate(SamplerBuilder::new(), None, 8);
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
}

#[test]
fn seeded_dist_is_reproducible() {
    // A high temperature spreads the distribution so the seed matters.
    let chain = || SamplerBuilder::new().with_temp(5.0);
    let a = generate(chain(), Some(42), 12);
    let b = generate(chain(), Some(42), 12);
    assert_eq!(a, b);
    let mut seen = std::collections::HashSet::new();
    for seed in 1..=4 {
        seen.insert(generate(chain(), Some(seed), 12));
    }
    assert!(seen.len() > 1, "different seeds should not all agree");

    let vocab = moe().vocab();
    let s = SamplerBuilder::new().dist(&vocab, 42).unwrap();
    assert_eq!(s.seed(), Some(42));
}

#[test]
fn every_stage_builds_and_samples_valid_tokens() {
    let (ctx, last) = decoded_ctx();
    let vocab = ctx.vocab();
    let mut s = SamplerBuilder::new()
        .with_penalties(Penalties {
            last_n: 16,
            repeat: 1.1,
            frequency: 0.1,
            presence: 0.1,
        })
        .with_top_k(40)
        .with_typical(0.95, 1)
        .with_top_p(0.9, 1)
        .with_min_p(0.05, 1)
        .with_temp(0.8)
        .dist(&vocab, 3)
        .unwrap();
    for _ in 0..5 {
        let t = s.sample(&ctx, last).unwrap();
        assert!(vocab.contains(t));
    }
    // top-k 1 leaves the greedy token whatever the seed.
    let greedy = SamplerBuilder::new()
        .greedy(&vocab)
        .unwrap()
        .sample(&ctx, last)
        .unwrap();
    for seed in 0..4 {
        let mut k1 = SamplerBuilder::new()
            .with_top_k(1)
            .dist(&vocab, seed)
            .unwrap();
        assert_eq!(k1.sample(&ctx, last).unwrap(), greedy);
    }
    s.reset();
    s.accept(Token(3)).unwrap();
    assert_eq!(
        s.accept(Token(vocab.n_tokens() as i32)),
        Err(SampleError::TokenOutOfRange(Token(vocab.n_tokens() as i32)))
    );
}

#[test]
fn sampling_checks_indices_lengths_and_vocabulary() {
    let (ctx, last) = decoded_ctx();
    let mut s = SamplerBuilder::new().greedy(&ctx.vocab()).unwrap();
    assert!(matches!(
        s.sample(&ctx, last + 3),
        Err(SampleError::Output(_))
    ));
    assert_eq!(
        s.sample_logits(&[0.0; 3]),
        Err(SampleError::LogitsLength {
            expected: ctx.vocab().n_tokens(),
            got: 3
        })
    );
    // A sampler built for another model refuses this context.
    let other = load_tiny(Arch::Llama);
    let mut foreign = SamplerBuilder::new().greedy(&other.vocab()).unwrap();
    assert_eq!(foreign.sample(&ctx, last), Err(SampleError::VocabMismatch));
}

#[test]
fn grammar_constrains_output_to_yes_or_no() {
    let model = moe();
    let vocab = model.vocab();
    let prompt = vocab
        .tokenize("Is the fox quick?", AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    for seed in [None, Some(1), Some(2), Some(3)] {
        let b = SamplerBuilder::new()
            .with_temp(1.5)
            .with_grammar(r#"root ::= "yes" | "no""#, "root");
        let mut sampler = match seed {
            Some(s) => b.dist(&vocab, s).unwrap(),
            None => b.greedy(&vocab).unwrap(),
        };
        let mut ctx = small_ctx(model);
        let out = ctx
            .complete(
                &mut sampler,
                &prompt,
                GenerateParams::default().with_max_tokens(16),
            )
            .unwrap();
        assert!(
            out.text == "yes" || out.text == "no",
            "seed {seed:?}: {:?}",
            out.text
        );
        assert!(matches!(
            out.stats.stop_reason,
            Some(llama_cpp_moe::generate::StopReason::EndOfGeneration(_))
        ));
    }
}

#[test]
fn grammar_refuses_forbidden_tokens_instead_of_aborting() {
    let vocab = moe().vocab();
    let mut s = SamplerBuilder::new()
        .with_grammar(r#"root ::= "yes""#, "root")
        .greedy(&vocab)
        .unwrap();
    let no = vocab
        .tokenize("no", AddSpecial::No, ParseSpecial::No)
        .unwrap()[0];
    let y = vocab
        .tokenize("y", AddSpecial::No, ParseSpecial::No)
        .unwrap()[0];
    let eos = vocab.eos().unwrap();
    assert_eq!(s.accept(no), Err(SampleError::GrammarRejected));
    // End of generation before the grammar is complete would abort in llama.cpp.
    assert_eq!(s.accept(eos), Err(SampleError::GrammarRejected));
    s.accept(y).unwrap();

    // Logits that make every allowed token impossible: the grammar masks the rest, so
    // nothing is left and the error is typed.
    let mut only_no = SamplerBuilder::new()
        .with_top_k(1)
        .with_grammar(r#"root ::= "yes""#, "root")
        .greedy(&vocab)
        .unwrap();
    let mut logits = vec![f32::NEG_INFINITY; vocab.n_tokens()];
    logits[no.0 as usize] = 1.0;
    assert_eq!(
        only_no.sample_logits(&logits),
        Err(SampleError::GrammarRejected)
    );
}

#[test]
fn invalid_grammars_are_typed_errors() {
    let vocab = moe().vocab();
    for (gbnf, root) in [
        (r#"root ::= ("yes""#, "root"),         // unclosed group
        (r#"root = "yes""#, "root"),            // missing ::=
        (r#"root ::= undefined_rule"#, "root"), // undefined rule
        (r#"answer ::= "yes""#, "root"),        // no root rule
        (r#"root ::= root "a""#, "root"),       // left recursion
        (r#"root ::= "unterminated"#, "root"),
    ] {
        let err = SamplerBuilder::new()
            .with_grammar(gbnf, root)
            .greedy(&vocab)
            .map(|_| ())
            .expect_err(gbnf);
        assert!(
            matches!(err, SamplerError::Grammar { .. }),
            "{gbnf}: {err:?}"
        );
    }
    assert!(matches!(
        SamplerBuilder::new().with_top_p(2.0, 1).greedy(&vocab),
        Err(SamplerError::InvalidParam { .. })
    ));
}
