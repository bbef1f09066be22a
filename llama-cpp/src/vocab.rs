//! The model's vocabulary: tokenization, token pieces, special tokens.

mod chat;
mod facts;
mod utf8;

use std::cell::Cell;
use std::ffi::c_char;
use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

pub use chat::{apply_chat_template, ChatMessage, ChatTemplateError};
pub use facts::{TokenAttrs, VocabType};
pub use utf8::Utf8Decoder;

use crate::ffi::{c_int_len, fill_growing, Fill};
use crate::Model;

/// A token id of a model's vocabulary.
///
/// Any `i32` can be wrapped; every call that hands a token to llama.cpp checks it
/// against the vocabulary first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Token(pub i32);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! yes_no {
    ($(#[$doc:meta])* $name:ident { yes: $yes:literal, no: $no:literal }) => {
        $(#[$doc])*
        ///
        /// An enum rather than a `bool`, so the call site says what it asks for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            #[doc = $yes]
            Yes,
            #[doc = $no]
            No,
        }

        impl From<bool> for $name {
            fn from(yes: bool) -> Self {
                if yes {
                    $name::Yes
                } else {
                    $name::No
                }
            }
        }

        impl From<$name> for bool {
            fn from(v: $name) -> bool {
                v == $name::Yes
            }
        }
    };
}

yes_no!(
    /// Whether [`Vocab::tokenize`] adds the BOS/EOS tokens the model asks for
    /// ([`Vocab::adds_bos`], [`Vocab::adds_eos`]).
    AddSpecial {
        yes: "Add them (a prompt that starts a sequence).",
        no: "Tokenize the text alone (a continuation)."
    }
);
yes_no!(
    /// Whether [`Vocab::tokenize`] turns the texts of special tokens (e.g.
    /// `<|im_start|>`) into those tokens.
    ParseSpecial {
        yes: "Parse them (text from a chat template).",
        no: "Tokenize them as plain text (untrusted user text)."
    }
);
yes_no!(
    /// Whether special/control tokens are rendered as their text
    /// ([`Vocab::token_to_bytes`], [`Vocab::detokenize`]).
    RenderSpecial {
        yes: "Render them as their text.",
        no: "Render them as nothing."
    }
);
yes_no!(
    /// Whether [`apply_chat_template`] ends the prompt with the opening of an assistant
    /// turn.
    AddAssistant {
        yes: "Open the assistant's turn (a prompt to generate the reply from).",
        no: "Stop after the last message (e.g. to format a finished conversation)."
    }
);
yes_no!(
    /// Whether [`Vocab::detokenize`] drops the BOS/EOS tokens the model adds.
    RemoveSpecial {
        yes: "Drop them.",
        no: "Keep them."
    }
);

/// Why a vocabulary operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VocabError {
    /// The token id is not in the vocabulary.
    #[error("token {token} is out of range (vocabulary has {n_vocab} tokens)")]
    TokenOutOfRange {
        /// The offending token.
        token: Token,
        /// Size of the vocabulary.
        n_vocab: usize,
    },
    /// The input is longer than llama.cpp can count (`i32::MAX` bytes or tokens).
    #[error("input too long for llama.cpp ({0} elements)")]
    TooLong(usize),
    /// llama.cpp returned a length that contradicts the buffer it was given (it asked
    /// for no more room than it had, said it wrote more than fits, or kept asking for
    /// more); the last return code is kept.
    #[error(
        "llama.cpp {call} returned {code}, a length inconsistent with the buffer it was given"
    )]
    InconsistentLength {
        /// The C function.
        call: &'static str,
        /// What it returned last.
        code: i32,
    },
}

/// The vocabulary of a [`Model`], borrowed from it.
///
/// ```no_run
/// use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
/// use llama_cpp_moe::{Backend, Model, ModelParams};
///
/// # fn main() -> llama_cpp_moe::Result<()> {
/// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
/// let vocab = model.vocab();
/// let tokens = vocab.tokenize("Hello 🦀", AddSpecial::Yes, ParseSpecial::No)?;
/// let text = vocab.detokenize(&tokens, RemoveSpecial::Yes, RenderSpecial::No)?;
/// assert_eq!(text, "Hello 🦀");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Vocab<'model> {
    ptr: NonNull<sys::llama_vocab>,
    n_tokens: usize,
    _model: PhantomData<&'model Model>,
}

// SAFETY: the vocabulary is immutable after loading, and llama.h documents the
// tokenization API as thread-safe; the pointer is valid for 'model, and Model is Sync.
unsafe impl Send for Vocab<'_> {}
// SAFETY: as above: every method only reads the vocabulary through llama.cpp's
// thread-safe, const tokenization calls.
unsafe impl Sync for Vocab<'_> {}

impl Model {
    /// The model's vocabulary. C equivalent: `llama_model_get_vocab(model)`.
    pub fn vocab(&self) -> Vocab<'_> {
        // SAFETY: valid model pointer; the vocab lives inside the model.
        let ptr = unsafe { sys::llama_model_get_vocab(self.as_ptr()) };
        let ptr = NonNull::new(ptr.cast_mut()).expect("llama_model_get_vocab never returns NULL");
        // SAFETY: valid vocab pointer.
        let n = unsafe { sys::llama_vocab_n_tokens(ptr.as_ptr()) };
        Vocab {
            ptr,
            n_tokens: n.max(0) as usize,
            _model: PhantomData,
        }
    }
}

fn opt_token(t: sys::llama_token) -> Option<Token> {
    (t != sys::LLAMA_TOKEN_NULL).then_some(Token(t))
}

impl<'model> Vocab<'model> {
    /// The raw pointer, valid while the model lives.
    pub fn as_ptr(&self) -> *const sys::llama_vocab {
        self.ptr.as_ptr()
    }

    /// Number of tokens in the vocabulary.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Whether `token` is a valid id of this vocabulary.
    pub fn contains(&self, token: Token) -> bool {
        token.0 >= 0 && (token.0 as usize) < self.n_tokens
    }

    /// `Ok(())` when `token` is in range, the typed error otherwise.
    pub fn check(&self, token: Token) -> Result<(), VocabError> {
        if self.contains(token) {
            Ok(())
        } else {
            Err(VocabError::TokenOutOfRange {
                token,
                n_vocab: self.n_tokens,
            })
        }
    }

    /// Beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_bos(self.as_ptr()) })
    }

    /// End-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_eos(self.as_ptr()) })
    }

    /// End-of-turn token, if the model has one.
    pub fn eot(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_eot(self.as_ptr()) })
    }

    /// Sentence separator token, if the model has one.
    pub fn sep(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_sep(self.as_ptr()) })
    }

    /// Newline token, if the model has one.
    pub fn nl(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_nl(self.as_ptr()) })
    }

    /// Padding token, if the model has one.
    pub fn pad(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_pad(self.as_ptr()) })
    }

    /// Whether tokenizing with [`AddSpecial::Yes`] prepends BOS.
    pub fn adds_bos(&self) -> bool {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_get_add_bos(self.as_ptr()) }
    }

    /// Whether tokenizing with [`AddSpecial::Yes`] appends EOS.
    pub fn adds_eos(&self) -> bool {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_get_add_eos(self.as_ptr()) }
    }

    /// Whether `token` ends generation (EOS, EOT, ...). False for ids out of range.
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: valid vocab pointer; the id is in range.
        self.contains(token) && unsafe { sys::llama_vocab_is_eog(self.as_ptr(), token.0) }
    }

    /// Whether `token` is a control token (not rendered as text). False for ids out of range.
    pub fn is_control(&self, token: Token) -> bool {
        // SAFETY: valid vocab pointer; the id is in range (llama.cpp indexes with .at()).
        self.contains(token) && unsafe { sys::llama_vocab_is_control(self.as_ptr(), token.0) }
    }

    /// Converts text to tokens.
    ///
    /// [`AddSpecial::Yes`] adds BOS/EOS as the model asks ([`Vocab::adds_bos`]);
    /// [`ParseSpecial::Yes`] turns the texts of special tokens (e.g. `<|im_start|>`) into
    /// those tokens instead of tokenizing them as plain text.
    ///
    /// C equivalent: `llama_tokenize(vocab, text, len, tokens, max, add_special, parse_special)`.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: AddSpecial,
        parse_special: ParseSpecial,
    ) -> Result<Vec<Token>, VocabError> {
        let len = i32::try_from(text.len()).map_err(|_| VocabError::TooLong(text.len()))?;
        let tokens = fill_counted(
            "llama_tokenize",
            // A first guess that fits almost always: at most one token per byte, plus
            // specials.
            text.len() + 2,
            |out: &mut [sys::llama_token], cap| {
                // SAFETY: text is valid for `len` bytes (C copies it into a std::string,
                // so no NUL terminator is needed); `out` has room for `cap` tokens.
                let n = unsafe {
                    sys::llama_tokenize(
                        self.as_ptr(),
                        text.as_ptr().cast::<c_char>(),
                        len,
                        out.as_mut_ptr(),
                        cap,
                        add_special.into(),
                        parse_special.into(),
                    )
                };
                if n == i32::MIN {
                    return Err(VocabError::TooLong(text.len()));
                }
                Ok(n)
            },
        )?;
        Ok(tokens.into_iter().map(Token).collect())
    }

    /// The bytes of `token`'s text. Byte-level vocabularies split characters across
    /// tokens, so a piece may be partial UTF-8: feed pieces to a [`Utf8Decoder`].
    ///
    /// [`RenderSpecial::Yes`] renders control tokens (otherwise they give no bytes).
    ///
    /// C equivalent: `llama_token_to_piece(vocab, token, buf, len, 0, special)`.
    pub fn token_to_bytes(
        &self,
        token: Token,
        special: RenderSpecial,
    ) -> Result<Vec<u8>, VocabError> {
        self.check(token)?;
        fill_counted("llama_token_to_piece", 32, |buf: &mut [u8], cap| {
            // SAFETY: valid vocab, in-range token, `buf` has `cap` writable bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.as_ptr(),
                    token.0,
                    buf.as_mut_ptr().cast::<c_char>(),
                    cap,
                    0,
                    special.into(),
                )
            };
            Ok(n)
        })
    }

    /// `token`'s text; a partial UTF-8 piece is shown with U+FFFD. See
    /// [`Vocab::token_to_bytes`] for streaming.
    pub fn token_to_piece(
        &self,
        token: Token,
        special: RenderSpecial,
    ) -> Result<String, VocabError> {
        let bytes = self.token_to_bytes(token, special)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Converts tokens back to text (invalid UTF-8, if any, becomes U+FFFD).
    ///
    /// [`RemoveSpecial::Yes`] drops the BOS/EOS the model adds; [`RenderSpecial::Yes`]
    /// renders special tokens as their text.
    ///
    /// C equivalent: `llama_detokenize(vocab, tokens, n, buf, len, remove_special, unparse_special)`.
    pub fn detokenize(
        &self,
        tokens: &[Token],
        remove_special: RemoveSpecial,
        unparse_special: RenderSpecial,
    ) -> Result<String, VocabError> {
        for &t in tokens {
            self.check(t)?;
        }
        let n_tokens =
            i32::try_from(tokens.len()).map_err(|_| VocabError::TooLong(tokens.len()))?;
        let bytes = fill_counted(
            "llama_detokenize",
            tokens.len() * 4 + 16,
            |buf: &mut [u8], cap| {
                // SAFETY: valid vocab; every token was checked to be in range; `buf` has
                // `cap` writable bytes; Token is repr(transparent) over llama_token.
                let n = unsafe {
                    sys::llama_detokenize(
                        self.as_ptr(),
                        tokens.as_ptr().cast::<sys::llama_token>(),
                        n_tokens,
                        buf.as_mut_ptr().cast::<c_char>(),
                        cap,
                        remove_special.into(),
                        unparse_special.into(),
                    )
                };
                if n == i32::MIN {
                    return Err(VocabError::TooLong(tokens.len()));
                }
                Ok(n)
            },
        )?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Calls `c_call(buf, capacity)`, a llama.cpp function with the "count written, or
/// minus the count needed" convention, growing `buf` while it asks for more room. A
/// return that contradicts the buffer (see [`fill_growing`]) is
/// [`VocabError::InconsistentLength`] with the code `call` returned last.
fn fill_counted<T: Clone + Default>(
    call: &'static str,
    initial_len: usize,
    mut c_call: impl FnMut(&mut [T], i32) -> Result<i32, VocabError>,
) -> Result<Vec<T>, VocabError> {
    let last = Cell::new(0);
    fill_growing(
        initial_len,
        |buf: &mut [T]| {
            let cap = c_int_len(buf, VocabError::TooLong)?;
            let n = c_call(buf, cap)?;
            last.set(n);
            Ok(Fill::from_count_or_negated_need(n))
        },
        || VocabError::InconsistentLength {
            call,
            code: last.get(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns that contradict the buffer are reported with the code C returned, not
    /// an invented one.
    #[test]
    fn an_inconsistent_length_keeps_the_code_c_returned() {
        // Asks for 3 elements while it has 8.
        let asks_less = fill_counted::<u8>("asks_less", 8, |_, _| Ok(-3));
        assert_eq!(
            asks_less,
            Err(VocabError::InconsistentLength {
                call: "asks_less",
                code: -3
            })
        );
        // Says it wrote 100 into 8.
        let wrote_more = fill_counted::<u8>("wrote_more", 8, |_, _| Ok(100));
        assert_eq!(
            wrote_more,
            Err(VocabError::InconsistentLength {
                call: "wrote_more",
                code: 100
            })
        );
        assert_eq!(
            wrote_more.unwrap_err().to_string(),
            "llama.cpp wrote_more returned 100, a length inconsistent with the buffer it \
             was given"
        );
        // Asks for one more element every time.
        let mut grow = 8;
        let keeps_asking = fill_counted::<u8>("keeps_asking", 8, |buf, cap| {
            assert_eq!(usize::try_from(cap).unwrap(), buf.len());
            grow += 1;
            Ok(-grow)
        });
        assert_eq!(
            keeps_asking,
            Err(VocabError::InconsistentLength {
                call: "keeps_asking",
                code: -12
            })
        );
        // The convention itself: a short call, then the size it asked for.
        let fits = fill_counted::<u8>("fits", 2, |buf, _| {
            if buf.len() < 5 {
                return Ok(-5);
            }
            buf.copy_from_slice(b"hello");
            Ok(5)
        });
        assert_eq!(fits.unwrap(), b"hello");
    }

    #[test]
    fn token_is_transparent_over_llama_token() {
        assert_eq!(
            std::mem::size_of::<Token>(),
            std::mem::size_of::<sys::llama_token>()
        );
        assert_eq!(
            std::mem::align_of::<Token>(),
            std::mem::align_of::<sys::llama_token>()
        );
        assert_eq!(Token(7).to_string(), "7");
    }
}
