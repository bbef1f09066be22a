//! Every sampler of llama.h beyond the basic chain, each tested on real llama.cpp for
//! the behaviour that defines it, on hand-made logits over a synthetic vocabulary; and
//! the chain operations (names, remove, clone) and Rust-written samplers.

mod ctx_support;

use ctx_support::moe;
use llama_cpp_moe::sampler::{
    AdaptiveP, Candidates, CustomSampler, Dry, LazyTriggers, Mirostat, MirostatV2, SampleError,
    SamplerError, TempExt, Xtc,
};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{SamplerBuilder, Token, Vocab};

fn vocab() -> Vocab<'static> {
    moe().vocab()
}

/// The single token `text` tokenizes to.
fn tok(text: &str) -> Token {
    let t = vocab()
        .tokenize(text, AddSpecial::No, ParseSpecial::No)
        .unwrap();
    assert_eq!(t.len(), 1, "{text:?} is not one token: {t:?}");
    t[0]
}

/// Logits of `base` everywhere but at the given tokens.
fn logits(base: f32, set: &[(Token, f32)]) -> Vec<f32> {
    let mut l = vec![base; vocab().n_tokens()];
    for &(t, v) in set {
        l[t.0 as usize] = v;
    }
    l
}

#[test]
fn logit_bias_changes_the_greedy_choice() {
    let (a, b, c) = (Token(300), Token(301), Token(302));
    let l = logits(0.0, &[(a, 5.0), (b, 4.0), (c, 1.0)]);
    let greedy = |bias: Vec<(Token, f32)>| {
        SamplerBuilder::new()
            .with_logit_bias(bias)
            .greedy(&vocab())
            .unwrap()
            .sample_logits(&l)
            .unwrap()
    };
    assert_eq!(greedy(vec![]), a);
    assert_eq!(greedy(vec![(a, f32::NEG_INFINITY)]), b);
    assert_eq!(greedy(vec![(c, 10.0)]), c);

    let n = vocab().n_tokens() as i32;
    assert_eq!(
        SamplerBuilder::new()
            .with_logit_bias([(Token(n), 1.0)])
            .greedy(&vocab())
            .unwrap_err(),
        SamplerError::UnknownToken {
            sampler: "logit-bias",
            token: Token(n)
        }
    );
    for bad in [f32::NAN, f32::INFINITY] {
        assert!(matches!(
            SamplerBuilder::new()
                .with_logit_bias([(a, bad)])
                .greedy(&vocab()),
            Err(SamplerError::InvalidParam { .. })
        ));
    }
}

#[test]
fn dry_penalises_the_token_that_extends_a_repeat() {
    // History "a b c d a b c": emitting "d" next would repeat "a b c d".
    let [a, b, c, d, e] = [300, 301, 302, 303, 304].map(Token);
    let l = logits(0.0, &[(d, 5.0), (e, 4.5)]);
    let dry = || {
        SamplerBuilder::new()
            .with_dry(Dry {
                multiplier: 1.0,
                base: 2.0,
                allowed_length: 2,
                penalty_last_n: 64,
                sequence_breakers: vec![],
            })
            .greedy(&vocab())
            .unwrap()
    };
    let mut repeated = dry();
    for t in [a, b, c, d, a, b, c] {
        repeated.accept(t).unwrap();
    }
    assert_eq!(
        repeated.sample_logits(&l).unwrap(),
        e,
        "DRY let the repeat through"
    );

    // The same logits without a repeat in the history: no penalty.
    let mut fresh = dry();
    for t in [a, b, c, e, b, a, c] {
        fresh.accept(t).unwrap();
    }
    assert_eq!(fresh.sample_logits(&l).unwrap(), d);

    for bad in [
        Dry {
            penalty_last_n: -1,
            ..Dry::default()
        },
        Dry {
            allowed_length: -1,
            ..Dry::default()
        },
        Dry {
            multiplier: f32::NAN,
            ..Dry::default()
        },
        Dry {
            base: 0.5,
            ..Dry::default()
        },
        Dry {
            sequence_breakers: vec![String::new()],
            ..Dry::default()
        },
        Dry {
            sequence_breakers: vec!["a\0b".into()],
            ..Dry::default()
        },
    ] {
        assert!(
            matches!(
                SamplerBuilder::new().with_dry(bad.clone()).greedy(&vocab()),
                Err(SamplerError::InvalidParam { sampler: "dry", .. })
            ),
            "{bad:?}"
        );
    }
    // The default (with its breakers, tokenized by llama.cpp) builds.
    SamplerBuilder::new()
        .with_dry(Dry::default())
        .greedy(&vocab())
        .unwrap();
}

#[test]
fn xtc_removes_the_top_choices_above_the_threshold() {
    let [a, b, c] = [300, 301, 302].map(Token);
    // a, b and c each hold about a third of the mass; the rest almost nothing.
    let l = logits(-20.0, &[(a, 3.0), (b, 2.9), (c, 2.8)]);
    let xtc = |probability| {
        SamplerBuilder::new()
            .with_xtc(Xtc {
                probability,
                threshold: 0.1,
                min_keep: 1,
                seed: 1,
            })
            .greedy(&vocab())
            .unwrap()
            .sample_logits(&l)
            .unwrap()
    };
    // Every token above the threshold but the least likely of them is gone.
    assert_eq!(xtc(1.0), c);
    assert_eq!(xtc(0.0), a);
    for bad in [
        Xtc {
            probability: 1.5,
            ..Xtc::default()
        },
        Xtc {
            threshold: 0.6,
            ..Xtc::default()
        },
        Xtc {
            threshold: f32::NAN,
            ..Xtc::default()
        },
    ] {
        assert!(matches!(
            SamplerBuilder::new().with_xtc(bad).greedy(&vocab()),
            Err(SamplerError::InvalidParam { sampler: "xtc", .. })
        ));
    }
}

#[test]
fn top_n_sigma_keeps_only_the_logits_near_the_top() {
    let [a, b] = [300, 301].map(Token);
    // Two tokens one logit above a flat crowd that holds most of the mass.
    let l = logits(2.0, &[(a, 3.0), (b, 3.0)]);
    let mut outside = 0;
    for seed in 0..20 {
        let picked = |n: Option<f32>| {
            let mut s = SamplerBuilder::new();
            if let Some(n) = n {
                s = s.with_top_n_sigma(n);
            }
            s.dist(&vocab(), seed).unwrap().sample_logits(&l).unwrap()
        };
        let t = picked(Some(1.0));
        assert!(t == a || t == b, "seed {seed}: {t:?}");
        outside += usize::from(!matches!(picked(None), x if x == a || x == b));
    }
    assert!(outside > 10, "without top-n-sigma the crowd should win");
    for bad in [0.0, -1.0, f32::NAN] {
        assert!(matches!(
            SamplerBuilder::new().with_top_n_sigma(bad).greedy(&vocab()),
            Err(SamplerError::InvalidParam { .. })
        ));
    }
}

#[test]
fn temp_ext_without_range_is_plain_temperature() {
    let l: Vec<f32> = (0..vocab().n_tokens())
        .map(|i| -(i as f32) * 0.01)
        .collect();
    for seed in 0..8 {
        let plain = SamplerBuilder::new()
            .with_temp(0.7)
            .dist(&vocab(), seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        let ext = SamplerBuilder::new()
            .with_temp_ext(TempExt {
                temp: 0.7,
                delta: 0.0,
                exponent: 1.0,
            })
            .dist(&vocab(), seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        assert_eq!(plain, ext, "seed {seed}");
        // temp <= 0 keeps only the most likely token, whatever the seed.
        let zero = SamplerBuilder::new()
            .with_temp_ext(TempExt {
                temp: 0.0,
                delta: 0.0,
                exponent: 1.0,
            })
            .dist(&vocab(), seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        assert_eq!(zero, Token(0));
    }
    assert!(matches!(
        SamplerBuilder::new()
            .with_temp_ext(TempExt {
                delta: -1.0,
                ..TempExt::default()
            })
            .greedy(&vocab()),
        Err(SamplerError::InvalidParam { .. })
    ));
}

/// Zipf-shaped logits (p_i ~ 1/(i+1)^1.2): the most likely token holds about a
/// quarter of the mass.
fn zipf() -> Vec<f32> {
    (0..vocab().n_tokens())
        .map(|i| -1.2 * ((i + 1) as f32).ln())
        .collect()
}

#[test]
fn temp_ext_follows_the_entropy() {
    // Zipf logits have a moderate entropy; with a steep exponent it maps to the bottom
    // of [temp - delta, temp + delta] = [0, 2], a near-zero temperature: the argmax
    // every time, where the plain temperature 1 samples widely.
    let l = zipf();
    let mut plain_varied = 0;
    for seed in 0..16 {
        let dynamic = SamplerBuilder::new()
            .with_temp_ext(TempExt {
                temp: 1.0,
                delta: 1.0,
                exponent: 10.0,
            })
            .dist(&vocab(), seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        assert_eq!(dynamic, Token(0), "seed {seed}");
        let plain = SamplerBuilder::new()
            .with_temp(1.0)
            .dist(&vocab(), seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        plain_varied += usize::from(plain != Token(0));
    }
    assert!(plain_varied > 4, "{plain_varied}");
}

#[test]
fn mirostat_truncates_to_its_target_surprise() {
    let l = zipf();
    let mut varied = [0usize; 2];
    for seed in 0..16 {
        // A low target surprise leaves only the most likely token.
        let v1 = SamplerBuilder::new()
            .mirostat(
                &vocab(),
                Mirostat {
                    tau: 0.5,
                    eta: 0.1,
                    m: 100,
                },
                seed,
            )
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        let v2 = SamplerBuilder::new()
            .mirostat_v2(&vocab(), MirostatV2 { tau: 0.5, eta: 0.1 }, seed)
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        assert_eq!((v1, v2), (Token(0), Token(0)), "seed {seed}");
        // A high one leaves the distribution almost whole.
        let wide1 = SamplerBuilder::new()
            .mirostat(
                &vocab(),
                Mirostat {
                    tau: 10.0,
                    eta: 0.1,
                    m: 100,
                },
                seed,
            )
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        let wide2 = SamplerBuilder::new()
            .mirostat_v2(
                &vocab(),
                MirostatV2 {
                    tau: 10.0,
                    eta: 0.1,
                },
                seed,
            )
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        varied[0] += usize::from(wide1 != Token(0));
        varied[1] += usize::from(wide2 != Token(0));
    }
    assert!(varied[0] > 4 && varied[1] > 4, "{varied:?}");

    let s = SamplerBuilder::new()
        .mirostat(&vocab(), Mirostat::default(), 5)
        .unwrap();
    assert_eq!(s.stage_names(), ["mirostat"]);
    assert_eq!(s.seed(), Some(5));
    for bad in [
        Mirostat {
            m: 1,
            ..Mirostat::default()
        },
        Mirostat {
            tau: f32::NAN,
            ..Mirostat::default()
        },
        Mirostat {
            eta: -0.1,
            ..Mirostat::default()
        },
    ] {
        assert!(matches!(
            SamplerBuilder::new().mirostat(&vocab(), bad, 0),
            Err(SamplerError::InvalidParam {
                sampler: "mirostat",
                ..
            })
        ));
    }
    assert!(matches!(
        SamplerBuilder::new().mirostat_v2(
            &vocab(),
            MirostatV2 {
                tau: f32::INFINITY,
                eta: 0.1
            },
            0
        ),
        Err(SamplerError::InvalidParam { .. })
    ));
}

#[test]
fn adaptive_p_prefers_tokens_near_its_target_probability() {
    let [a, b] = [300, 301].map(Token);
    // a ~ 0.55, b ~ 0.44, the rest share 0.01.
    let l = logits(0.0, &[(a, 9.71), (b, 9.49)]);
    let (mut near, mut top) = (0, 0);
    for seed in 0..40 {
        let t = SamplerBuilder::new()
            .adaptive_p(
                &vocab(),
                AdaptiveP {
                    target: 0.45,
                    decay: 0.0,
                },
                seed,
            )
            .unwrap()
            .sample_logits(&l)
            .unwrap();
        near += usize::from(t == b);
        top += usize::from(t == a);
    }
    assert!(
        near > top,
        "target 0.45 picked b {near} times, a {top} times"
    );
    for bad in [
        AdaptiveP {
            target: 1.5,
            decay: 0.5,
        },
        AdaptiveP {
            target: 0.5,
            decay: 1.0,
        },
        AdaptiveP {
            target: f32::NAN,
            decay: 0.5,
        },
    ] {
        assert!(matches!(
            SamplerBuilder::new().adaptive_p(&vocab(), bad, 0),
            Err(SamplerError::InvalidParam { .. })
        ));
    }
}

#[test]
fn infill_picks_end_of_generation_when_it_holds_enough_mass() {
    let v = vocab();
    let eot = v.eot().or(v.eos()).unwrap();
    let text = Token(300);
    // The text token is the argmax, but end of generation is nearly as likely.
    let l = logits(0.0, &[(text, 10.0), (eot, 9.9)]);
    let greedy = SamplerBuilder::new()
        .greedy(&v)
        .unwrap()
        .sample_logits(&l)
        .unwrap();
    assert_eq!(greedy, text);
    let infill = SamplerBuilder::new()
        .with_infill()
        .greedy(&v)
        .unwrap()
        .sample_logits(&l)
        .unwrap();
    assert!(v.is_eog(infill), "infill picked {infill:?}");
}

#[test]
fn lazy_grammar_is_free_before_its_trigger_and_constrains_after() {
    let v = vocab();
    let (a, z, five) = (tok("a"), tok("z"), tok("5"));
    let gbnf = r#"root ::= "a" [0-9]*"#;
    let favour = |t: Token| logits(0.0, &[(z, 10.0), (t, 8.0)]);
    let lazy = || {
        SamplerBuilder::new()
            .with_lazy_grammar(
                gbnf,
                "root",
                LazyTriggers::default().with_pattern(r"[\s\S]*?(a[\s\S]*)"),
            )
            .greedy(&v)
            .unwrap()
    };

    let mut s = lazy();
    // Before the trigger, "z" (which the grammar forbids) goes through.
    assert_eq!(s.sample_logits(&favour(five)).unwrap(), z);
    // "a" matches the trigger pattern and is the grammar's first input...
    assert_eq!(s.sample_logits(&logits(0.0, &[(a, 10.0)])).unwrap(), a);
    // ...and from then on only digits (or the end) are allowed.
    assert_eq!(s.sample_logits(&favour(five)).unwrap(), five);

    // An eager grammar forbids "z" from the start.
    let mut eager = SamplerBuilder::new()
        .with_grammar(gbnf, "root")
        .greedy(&v)
        .unwrap();
    assert_eq!(eager.sample_logits(&favour(a)).unwrap(), a);

    // A trigger token works the same way.
    let mut by_token = SamplerBuilder::new()
        .with_lazy_grammar(gbnf, "root", LazyTriggers::default().with_token(a))
        .greedy(&v)
        .unwrap();
    assert_eq!(by_token.sample_logits(&favour(five)).unwrap(), z);
    by_token.accept(a).unwrap();
    assert_eq!(by_token.sample_logits(&favour(five)).unwrap(), five);
}

#[test]
fn a_trigger_that_feeds_the_grammar_bad_text_is_an_error_not_an_abort() {
    // The pattern fires on "a", but the grammar wants "b": llama.cpp throws inside
    // accept, which used to take the process down.
    let v = vocab();
    let mut s = SamplerBuilder::new()
        .with_lazy_grammar(
            r#"root ::= "b""#,
            "root",
            LazyTriggers::default().with_pattern("[\\s\\S]*?(a)"),
        )
        .greedy(&v)
        .unwrap();
    let err = s.accept(tok("a")).unwrap_err();
    assert!(matches!(err, SampleError::GrammarAccept { .. }), "{err:?}");
    s.reset();
    s.accept(tok("z")).unwrap();
}

#[test]
fn invalid_lazy_triggers_are_typed_errors() {
    let v = vocab();
    let build = |t: LazyTriggers| {
        SamplerBuilder::new()
            .with_lazy_grammar(r#"root ::= "a""#, "root", t)
            .greedy(&v)
            .map(|_| ())
            .unwrap_err()
    };
    for p in ["(", "[a-", "a{2,1}", "", "x\0y"] {
        let err = build(LazyTriggers::default().with_pattern(p));
        assert!(
            matches!(err, SamplerError::TriggerPattern { .. }),
            "{p:?}: {err:?}"
        );
    }
    let out = Token(v.n_tokens() as i32 + 5);
    assert_eq!(
        build(LazyTriggers::default().with_token(out)),
        SamplerError::UnknownToken {
            sampler: "lazy grammar",
            token: out
        }
    );
    assert!(matches!(
        build(LazyTriggers::default()),
        SamplerError::InvalidParam { .. }
    ));
}

#[test]
fn stages_have_names_and_can_be_removed() {
    let v = vocab();
    let mut s = SamplerBuilder::new()
        .with_top_k(5)
        .with_temp(0.5)
        .with_grammar(r#"root ::= "a""#, "root")
        .greedy(&v)
        .unwrap();
    assert_eq!(s.name(), "chain");
    assert_eq!(s.stage_names(), ["grammar", "top-k", "temp", "greedy"]);
    assert_eq!(s.n_stages(), 4);
    assert!(s.remove(9).is_none());

    // Removing the grammar frees the output.
    let z = tok("z");
    let l = logits(0.0, &[(z, 5.0)]);
    let grammar = s.remove(0).unwrap();
    assert_eq!(grammar.name(), "grammar");
    drop(grammar);
    assert_eq!(s.stage_names(), ["top-k", "temp", "greedy"]);
    assert_eq!(s.sample_logits(&l).unwrap(), z);
    s.accept(z).unwrap();

    // Without its picking stage the chain selects nothing: a typed error.
    assert_eq!(s.remove(2).unwrap().name(), "greedy");
    assert_eq!(s.sample_logits(&l), Err(SampleError::NothingSelected));
}

#[test]
fn a_clone_continues_exactly_like_the_original() {
    let v = vocab();
    let l = zipf();
    let mut s = SamplerBuilder::new()
        .with_penalties(llama_cpp_moe::sampler::Penalties {
            repeat: 1.3,
            ..Default::default()
        })
        .with_temp(1.5)
        .dist(&v, 9)
        .unwrap();
    for _ in 0..5 {
        s.sample_logits(&l).unwrap();
    }
    let mut c = s.try_clone().unwrap();
    assert_eq!(c.stage_names(), s.stage_names());
    let a: Vec<Token> = (0..20).map(|_| s.sample_logits(&l).unwrap()).collect();
    let b: Vec<Token> = (0..20).map(|_| c.sample_logits(&l).unwrap()).collect();
    assert_eq!(a, b);
    // A fresh chain with the same seed has not drawn the first five: it differs.
    let mut fresh = SamplerBuilder::new().with_temp(1.5).dist(&v, 9).unwrap();
    let f: Vec<Token> = (0..25).map(|_| fresh.sample_logits(&l).unwrap()).collect();
    assert_ne!(f[5..], a[..]);
}

/// Forbids one token; panics in apply when told to.
struct Ban {
    token: Token,
    panic_in_apply: bool,
    panic_in_accept: bool,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<Token>>>,
}

impl CustomSampler for Ban {
    fn name(&self) -> String {
        "ban".into()
    }
    fn apply(&mut self, candidates: &mut Candidates<'_>) {
        if self.panic_in_apply {
            panic!("apply went wrong");
        }
        for c in candidates.as_mut_slice() {
            if c.id() == self.token {
                c.set_logit(f32::NEG_INFINITY);
            }
        }
    }
    fn accept(&mut self, token: Token) {
        if self.panic_in_accept {
            panic!("accept went wrong");
        }
        self.accepted.lock().unwrap().push(token);
    }
    fn clone_sampler(&self) -> Option<Box<dyn CustomSampler>> {
        Some(Box::new(Ban {
            token: self.token,
            panic_in_apply: self.panic_in_apply,
            panic_in_accept: self.panic_in_accept,
            accepted: self.accepted.clone(),
        }))
    }
}

fn ban(
    token: Token,
    panic_in_apply: bool,
    panic_in_accept: bool,
) -> (SamplerBuilder, std::sync::Arc<std::sync::Mutex<Vec<Token>>>) {
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = accepted.clone();
    let b = SamplerBuilder::new().with_custom(move || Ban {
        token,
        panic_in_apply,
        panic_in_accept,
        accepted: accepted.clone(),
    });
    (b, log)
}

#[test]
fn a_rust_sampler_changes_the_choice_and_sees_the_accepted_tokens() {
    let [a, b] = [300, 301].map(Token);
    let l = logits(0.0, &[(a, 5.0), (b, 4.0)]);
    let (builder, log) = ban(a, false, false);
    let mut s = builder.greedy(&vocab()).unwrap();
    assert_eq!(s.stage_names(), ["ban", "greedy"]);
    assert_eq!(s.sample_logits(&l).unwrap(), b);
    assert_eq!(*log.lock().unwrap(), [b]);
    // It clones through clone_sampler.
    let mut c = s.try_clone().unwrap();
    assert_eq!(c.sample_logits(&l).unwrap(), b);
    assert_eq!(*log.lock().unwrap(), [b, b]);
}

#[test]
fn a_panicking_rust_sampler_is_an_error_not_an_abort() {
    let [a, b] = [300, 301].map(Token);
    let l = logits(0.0, &[(a, 5.0), (b, 4.0)]);
    let (builder, _) = ban(a, true, false);
    let mut s = builder.greedy(&vocab()).unwrap();
    let err = s.sample_logits(&l).unwrap_err();
    match err {
        SampleError::Custom { stage, reason } => {
            assert_eq!(stage, "ban");
            assert!(reason.contains("apply went wrong"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let (builder, _) = ban(a, false, true);
    let mut s = builder.greedy(&vocab()).unwrap();
    assert!(matches!(
        s.sample_logits(&l),
        Err(SampleError::Custom { .. })
    ));
    assert!(matches!(s.accept(b), Err(SampleError::Custom { .. })));
}

/// A Rust sampler without clone support.
struct Plain;

impl CustomSampler for Plain {
    fn apply(&mut self, candidates: &mut Candidates<'_>) {
        candidates.truncate(0);
    }
}

#[test]
fn a_rust_sampler_that_cannot_clone_refuses_the_clone() {
    let s = SamplerBuilder::new()
        .with_custom(|| Plain)
        .greedy(&vocab())
        .unwrap();
    assert_eq!(
        s.try_clone().unwrap_err(),
        SamplerError::CloneUnsupported {
            stage: "rust".into()
        }
    );
    // truncate(0) keeps one candidate (llama.cpp asserts a non-empty array): the
    // first one, whatever the logits.
    let mut s = s;
    let l = logits(0.0, &[(Token(7), 3.0)]);
    assert_eq!(s.sample_logits(&l).unwrap(), Token(0));
}

#[test]
fn perf_counts_the_accepted_tokens() {
    let l = zipf();
    let mut s = SamplerBuilder::new()
        .with_perf(true)
        .with_temp(1.0)
        .dist(&vocab(), 1)
        .unwrap();
    assert_eq!(s.perf().n_sample, 0);
    for _ in 0..3 {
        s.sample_logits(&l).unwrap();
    }
    s.accept(Token(5)).unwrap();
    assert_eq!(s.perf().n_sample, 4);
    s.reset_perf();
    assert_eq!(s.perf(), Default::default());
}
