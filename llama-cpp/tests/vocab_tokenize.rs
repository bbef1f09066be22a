//! Vocab: tokenization round-trips, pieces through the UTF-8 stream decoder, special
//! tokens, chat templates, all through the safe API on a synthetic model.

mod ctx_support;

use ctx_support::moe;
use llama_cpp_moe::vocab::{AddAssistant, AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
use llama_cpp_moe::vocab::{ChatTemplateError, VocabError};
use llama_cpp_moe::{ChatMessage, Token, Utf8Decoder};

const TEXTS: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 🦀🎉👩‍👩‍👧 and flags 🇫🇷",
    "mixed: héllo 世界 Привет مرحبا नमस्ते ✓",
    "  leading and trailing spaces  \n\ttabs\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
];

#[test]
fn tokenize_detokenize_round_trips_every_script() {
    let vocab = moe().vocab();
    for text in TEXTS {
        let tokens = vocab
            .tokenize(text, AddSpecial::No, ParseSpecial::No)
            .unwrap();
        assert!(!tokens.is_empty());
        assert!(tokens.iter().all(|&t| vocab.contains(t)));
        assert_eq!(
            &vocab
                .detokenize(&tokens, RemoveSpecial::No, RenderSpecial::No)
                .unwrap(),
            text
        );
    }
    assert!(vocab
        .tokenize("", AddSpecial::No, ParseSpecial::No)
        .unwrap()
        .is_empty());
}

#[test]
fn add_special_prepends_bos_and_remove_special_drops_it() {
    let vocab = moe().vocab();
    assert!(vocab.adds_bos());
    let bos = vocab.bos().expect("synthetic vocab has BOS");
    let plain = vocab
        .tokenize("Hello", AddSpecial::No, ParseSpecial::No)
        .unwrap();
    let with_bos = vocab
        .tokenize("Hello", AddSpecial::Yes, ParseSpecial::No)
        .unwrap();
    assert_eq!(with_bos[0], bos);
    assert_eq!(&with_bos[1..], plain.as_slice());
    assert_eq!(
        vocab
            .detokenize(&with_bos, RemoveSpecial::Yes, RenderSpecial::No)
            .unwrap(),
        "Hello"
    );
    assert_eq!(
        vocab
            .detokenize(&with_bos, RemoveSpecial::No, RenderSpecial::Yes)
            .unwrap(),
        "<|begin_of_text|>Hello"
    );
}

#[test]
fn parse_special_maps_special_texts_to_their_tokens() {
    let vocab = moe().vocab();
    let text = "<|im_start|>user";
    let special = vocab
        .tokenize(text, AddSpecial::No, ParseSpecial::Yes)
        .unwrap();
    let plain = vocab
        .tokenize(text, AddSpecial::No, ParseSpecial::No)
        .unwrap();
    let im_start = special[0];
    assert!(vocab.is_control(im_start));
    assert_eq!(
        vocab.token_to_piece(im_start, RenderSpecial::Yes).unwrap(),
        "<|im_start|>"
    );
    // Control tokens render as nothing unless asked for.
    assert_eq!(
        vocab.token_to_piece(im_start, RenderSpecial::No).unwrap(),
        ""
    );
    assert!(!plain.contains(&im_start));
    assert!(plain.len() > special.len());
}

#[test]
fn special_tokens_and_end_of_generation() {
    let vocab = moe().vocab();
    let eos = vocab.eos().unwrap();
    let eot = vocab.eot().unwrap();
    assert!(vocab.is_eog(eos));
    assert!(vocab.is_eog(eot));
    assert_ne!(vocab.bos(), vocab.eos());
    let hello = vocab
        .tokenize("Hello", AddSpecial::No, ParseSpecial::No)
        .unwrap();
    assert!(!vocab.is_eog(hello[0]));
    // Out of range ids are simply not EOG/control; piece lookups are typed errors.
    let n = vocab.n_tokens();
    assert!(!vocab.is_eog(Token(n as i32)));
    assert!(!vocab.is_control(Token(-5)));
    assert_eq!(
        vocab.token_to_bytes(Token(n as i32), RenderSpecial::No),
        Err(VocabError::TokenOutOfRange {
            token: Token(n as i32),
            n_vocab: n
        })
    );
    assert!(matches!(
        vocab.detokenize(&[hello[0], Token(-1)], RemoveSpecial::No, RenderSpecial::No),
        Err(VocabError::TokenOutOfRange { .. })
    ));
}

#[test]
fn streaming_pieces_never_emit_a_broken_character() {
    let vocab = moe().vocab();
    for text in TEXTS {
        let tokens = vocab
            .tokenize(text, AddSpecial::No, ParseSpecial::No)
            .unwrap();
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .map(|&t| vocab.token_to_bytes(t, RenderSpecial::No).unwrap())
            .collect();
        assert_eq!(pieces.concat(), text.as_bytes());
        let mut dec = Utf8Decoder::new();
        let mut out = String::new();
        for piece in &pieces {
            let chunk = dec.push(piece);
            assert!(!chunk.contains('\u{FFFD}'), "{text:?}: {chunk:?}");
            out.push_str(&chunk);
        }
        out.push_str(&dec.finish());
        assert_eq!(&out, text);
    }
    // The byte-level vocabulary really splits multi-byte characters, so the decoder is
    // exercised on partial pieces above, not only on whole ones.
    let crab = vocab
        .tokenize("🦀", AddSpecial::No, ParseSpecial::No)
        .unwrap();
    let split = crab.iter().any(|&t| {
        std::str::from_utf8(&vocab.token_to_bytes(t, RenderSpecial::No).unwrap()).is_err()
    });
    assert!(split, "expected a partial UTF-8 piece in {crab:?}");
}

#[test]
fn model_chat_template_formats_and_tokenizes() {
    let model = moe();
    let tmpl = model
        .chat_template(None)
        .expect("synthetic model has a template");
    assert!(tmpl.contains("<|im_start|>"));
    assert_eq!(model.chat_template(Some("no-such-template")), None);
    let msgs = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Say 🦀!"),
    ];
    let prompt = model.apply_chat_template(&msgs, AddAssistant::Yes).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay 🦀!<|im_end|>\n<|im_start|>assistant\n"
    );
    let vocab = model.vocab();
    let tokens = vocab
        .tokenize(&prompt, AddSpecial::No, ParseSpecial::Yes)
        .unwrap();
    let im_end = vocab
        .tokenize("<|im_end|>", AddSpecial::No, ParseSpecial::Yes)
        .unwrap();
    assert_eq!(im_end.len(), 1);
    assert_eq!(tokens.iter().filter(|&&t| t == im_end[0]).count(), 2);
    assert_eq!(
        vocab
            .detokenize(&tokens, RemoveSpecial::No, RenderSpecial::Yes)
            .unwrap(),
        prompt
    );
    assert_eq!(
        model.apply_chat_template(&[ChatMessage::new("user", "a\0b")], AddAssistant::Yes),
        Err(ChatTemplateError::NulByte)
    );
}
