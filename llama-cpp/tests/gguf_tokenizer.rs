//! The synthetic tokenizer is real: llama.cpp tokenises and detokenises any UTF-8 text
//! exactly, special tokens and the chat template work.

mod gguf_support;

use std::ffi::CString;

use gguf_support::{detokenize, load_vocab_only, tokenize, TempPath};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_sys as sys;

const TEXTS: &[&str] = &[
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n and   runs of   spaces",
    "Grüße aus Köln — ça va? Ñandú, smørrebrød, İstanbul",
    "Привет, мир! Γειά σου Κόσμε! שלום עולם مرحبا بالعالم",
    "日本語のテキストと中文文本，한국어 텍스트도。",
    "emoji: 😀🚀🧪 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "math ∑∫√∞≠≤ and symbols ©®™ and zero-width\u{200b}joiner\u{200d}",
    "code: fn main() { println!(\"{}\", 1 + 2 * 3); } // 12345678901234567890",
    "<|im_start|> looks special but is plain text here <|im_end|>",
    "\u{0}\u{1}\u{7f} control bytes, combining e\u{301} and ﬁ ligature",
    "",
];

#[test]
fn utf8_round_trips_exactly_through_llama_cpp() {
    let path = TempPath::new("tokenizer.gguf");
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .write(&path.0)
        .unwrap();
    let model = load_vocab_only(&path.0);
    // SAFETY: model is valid; the vocab lives as long as the model.
    let vocab = unsafe { sys::llama_model_get_vocab(model) };
    let mut all = String::new();
    for text in TEXTS {
        let toks = tokenize(vocab, text, false);
        assert_eq!(
            detokenize(vocab, &toks),
            text.as_bytes(),
            "round trip of {text:?} via {toks:?}"
        );
        if text.is_ascii() && text.len() > 20 {
            assert!(
                toks.len() < text.len(),
                "merges should compress {text:?}: {} tokens",
                toks.len()
            );
        }
        all.push_str(text);
    }
    let toks = tokenize(vocab, &all, false);
    assert_eq!(detokenize(vocab, &toks), all.as_bytes());
    // SAFETY: model came from llama_model_load_from_file and is freed once.
    unsafe { sys::llama_model_free(model) };
}

#[test]
fn special_tokens_and_chat_template() {
    let path = TempPath::new("special.gguf");
    SynthSpec::new(Arch::GptOss, Preset::Tiny)
        .write(&path.0)
        .unwrap();
    let model = load_vocab_only(&path.0);
    // SAFETY: model is valid for every call below and freed once at the end; returned
    // strings are owned by the model and read before it is freed.
    unsafe {
        let vocab = sys::llama_model_get_vocab(model);
        let (bos, eos, eot) = (
            sys::llama_vocab_bos(vocab),
            sys::llama_vocab_eos(vocab),
            sys::llama_vocab_eot(vocab),
        );
        assert!(bos >= 0 && eos >= 0 && eot >= 0 && bos != eos && eos != eot);
        assert!(sys::llama_vocab_is_eog(vocab, eos) && sys::llama_vocab_is_eog(vocab, eot));
        assert!(sys::llama_vocab_is_control(vocab, bos));

        // With special parsing on, markers become single control tokens.
        let text = "<|im_start|>user\nhi<|im_end|>";
        let mut buf = vec![0; 64];
        let n = sys::llama_tokenize(
            vocab,
            text.as_ptr().cast(),
            text.len() as i32,
            buf.as_mut_ptr(),
            64,
            false,
            true,
        );
        assert!(n > 0);
        assert_eq!(buf[n as usize - 1], eot, "<|im_end|> is the EOT token");
        // add_special prepends BOS.
        assert_eq!(tokenize(vocab, "hi", true)[0], bos);

        let tmpl = sys::llama_model_chat_template(model, std::ptr::null());
        assert!(!tmpl.is_null(), "tokenizer.chat_template is present");
        let (role, content) = (
            CString::new("user").unwrap(),
            CString::new("Hello?").unwrap(),
        );
        let msg = sys::llama_chat_message {
            role: role.as_ptr(),
            content: content.as_ptr(),
        };
        let mut out = vec![0u8; 256];
        let n = sys::llama_chat_apply_template(
            tmpl,
            &msg,
            1,
            true,
            out.as_mut_ptr().cast(),
            out.len() as i32,
        );
        assert!(n > 0 && (n as usize) < out.len(), "template applied: {n}");
        let rendered = String::from_utf8_lossy(&out[..n as usize]).into_owned();
        assert!(
            rendered.contains("<|im_start|>user\nHello?<|im_end|>"),
            "{rendered}"
        );
        assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
        sys::llama_model_free(model);
    }
}
