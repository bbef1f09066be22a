//! What the vocabulary says about itself and its tokens: tokenizer type, fill-in-the-
//! middle tokens, and each token's text, score and attributes.

use llama_cpp_moe_sys as sys;

use super::{opt_token, Token, Vocab, VocabError};
use crate::ffi::string_from_c;

/// The tokenizer family of a vocabulary. C equivalent: `enum llama_vocab_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VocabType {
    /// No vocabulary (a model without one).
    None,
    /// SentencePiece-style BPE with byte fallback (LLaMA).
    Spm,
    /// Byte-level BPE (GPT-2).
    Bpe,
    /// WordPiece (BERT).
    Wpm,
    /// Unigram (T5).
    Ugm,
    /// RWKV's greedy tokenizer.
    Rwkv,
    /// PLaMo-2's Aho-Corasick tokenizer.
    Plamo2,
    /// llama.cpp's test tokenizer.
    Test,
    /// A value this crate does not know (a newer llama.cpp).
    Other(u32),
}

impl VocabType {
    fn from_raw(raw: sys::llama_vocab_type) -> VocabType {
        match raw {
            sys::LLAMA_VOCAB_TYPE_NONE => VocabType::None,
            sys::LLAMA_VOCAB_TYPE_SPM => VocabType::Spm,
            sys::LLAMA_VOCAB_TYPE_BPE => VocabType::Bpe,
            sys::LLAMA_VOCAB_TYPE_WPM => VocabType::Wpm,
            sys::LLAMA_VOCAB_TYPE_UGM => VocabType::Ugm,
            sys::LLAMA_VOCAB_TYPE_RWKV => VocabType::Rwkv,
            sys::LLAMA_VOCAB_TYPE_PLAMO2 => VocabType::Plamo2,
            sys::LLAMA_VOCAB_TYPE_TEST => VocabType::Test,
            other => VocabType::Other(other),
        }
    }
}

/// A token's attributes, a set of flags. C equivalent: `enum llama_token_attr`.
///
/// ```
/// use llama_cpp_moe::vocab::TokenAttrs;
///
/// let a = TokenAttrs::CONTROL | TokenAttrs::RSTRIP;
/// assert!(a.contains(TokenAttrs::CONTROL));
/// assert!(!a.contains(TokenAttrs::NORMAL));
/// assert_eq!(format!("{a:?}"), "TokenAttrs(CONTROL | RSTRIP)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenAttrs(u32);

impl TokenAttrs {
    /// No attribute (`LLAMA_TOKEN_ATTR_UNDEFINED`).
    pub const UNDEFINED: TokenAttrs = TokenAttrs(0);
    /// The unknown token.
    pub const UNKNOWN: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_UNKNOWN);
    /// An unused slot.
    pub const UNUSED: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_UNUSED);
    /// A normal text token.
    pub const NORMAL: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_NORMAL);
    /// A control token (BOS, EOS, chat markers...).
    pub const CONTROL: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_CONTROL);
    /// A user-defined token.
    pub const USER_DEFINED: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_USER_DEFINED);
    /// A raw byte (`<0x0A>`).
    pub const BYTE: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_BYTE);
    /// Normalized text.
    pub const NORMALIZED: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_NORMALIZED);
    /// Strips whitespace on its left.
    pub const LSTRIP: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_LSTRIP);
    /// Strips whitespace on its right.
    pub const RSTRIP: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_RSTRIP);
    /// Matches only a whole word.
    pub const SINGLE_WORD: TokenAttrs = TokenAttrs(sys::LLAMA_TOKEN_ATTR_SINGLE_WORD);

    const NAMES: [(TokenAttrs, &'static str); 10] = [
        (Self::UNKNOWN, "UNKNOWN"),
        (Self::UNUSED, "UNUSED"),
        (Self::NORMAL, "NORMAL"),
        (Self::CONTROL, "CONTROL"),
        (Self::USER_DEFINED, "USER_DEFINED"),
        (Self::BYTE, "BYTE"),
        (Self::NORMALIZED, "NORMALIZED"),
        (Self::LSTRIP, "LSTRIP"),
        (Self::RSTRIP, "RSTRIP"),
        (Self::SINGLE_WORD, "SINGLE_WORD"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The set with these raw bits (unknown bits are kept).
    pub fn from_bits_retain(bits: u32) -> TokenAttrs {
        TokenAttrs(bits)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: TokenAttrs) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for TokenAttrs {
    type Output = TokenAttrs;
    fn bitor(self, rhs: TokenAttrs) -> TokenAttrs {
        TokenAttrs(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for TokenAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| (*name).to_owned())
            .collect();
        let known = Self::NAMES.iter().fold(0, |acc, (flag, _)| acc | flag.0);
        if self.0 & !known != 0 {
            names.push(format!("{:#x}", self.0 & !known));
        }
        if names.is_empty() {
            names.push("UNDEFINED".into());
        }
        write!(f, "TokenAttrs({})", names.join(" | "))
    }
}

impl Vocab<'_> {
    /// The tokenizer family. C equivalent: `llama_vocab_type(vocab)`.
    pub fn vocab_type(&self) -> VocabType {
        // SAFETY: valid vocab pointer.
        VocabType::from_raw(unsafe { sys::llama_vocab_type(self.as_ptr()) })
    }

    /// Whether tokenizing with [`AddSpecial::Yes`](super::AddSpecial::Yes) adds the
    /// separator token (BERT-style pairs). C equivalent: `llama_vocab_get_add_sep`.
    pub fn adds_sep(&self) -> bool {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_get_add_sep(self.as_ptr()) }
    }

    /// The mask token (BERT-style), if the model has one.
    pub fn mask(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_mask(self.as_ptr()) })
    }

    /// Fill-in-the-middle prefix token (`<|fim_prefix|>`), if any.
    pub fn fim_pre(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_pre(self.as_ptr()) })
    }

    /// Fill-in-the-middle suffix token (`<|fim_suffix|>`), if any.
    pub fn fim_suf(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_suf(self.as_ptr()) })
    }

    /// Fill-in-the-middle middle token (`<|fim_middle|>`), if any.
    pub fn fim_mid(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_mid(self.as_ptr()) })
    }

    /// Fill-in-the-middle padding token (`<|fim_pad|>`), if any.
    pub fn fim_pad(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_pad(self.as_ptr()) })
    }

    /// Fill-in-the-middle repository token (`<|repo_name|>`), if any.
    pub fn fim_rep(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_rep(self.as_ptr()) })
    }

    /// Fill-in-the-middle file separator token (`<|file_sep|>`), if any.
    pub fn fim_sep(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        opt_token(unsafe { sys::llama_vocab_fim_sep(self.as_ptr()) })
    }

    /// Tokens the model asks never to generate (`tokenizer.ggml.suppress_tokens`;
    /// usually none). C equivalent: `llama_vocab_get_suppress_tokens`.
    pub fn suppress_tokens(&self) -> Vec<Token> {
        let mut n = 0i32;
        // SAFETY: valid vocab; n is a valid out-pointer; the returned array holds n
        // tokens owned by the vocabulary, alive here, and is copied at once.
        let p = unsafe { sys::llama_vocab_get_suppress_tokens(self.as_ptr(), &mut n) };
        if p.is_null() || n <= 0 {
            return Vec::new();
        }
        // SAFETY: as above: n initialised entries at p.
        unsafe { std::slice::from_raw_parts(p, n as usize) }
            .iter()
            .map(|&t| Token(t))
            .collect()
    }

    /// The token's text as stored in the vocabulary (`tokenizer.ggml.tokens`), e.g.
    /// `"Ġthe"` for a GPT-2 style BPE. C equivalent: `llama_vocab_get_text`.
    pub fn text(&self, token: Token) -> Result<String, VocabError> {
        self.check(token)?;
        // SAFETY: valid vocab, token in range (llama.cpp indexes with .at()); the text
        // is NUL-terminated and owned by the vocabulary, alive here.
        Ok(unsafe { string_from_c(sys::llama_vocab_get_text(self.as_ptr(), token.0)) })
    }

    /// The token's score (`tokenizer.ggml.scores`; 0 when the file has none).
    /// C equivalent: `llama_vocab_get_score`.
    pub fn score(&self, token: Token) -> Result<f32, VocabError> {
        self.check(token)?;
        // SAFETY: valid vocab, token in range (llama.cpp indexes with .at()).
        Ok(unsafe { sys::llama_vocab_get_score(self.as_ptr(), token.0) })
    }

    /// The token's attributes. C equivalent: `llama_vocab_get_attr`.
    pub fn attrs(&self, token: Token) -> Result<TokenAttrs, VocabError> {
        self.check(token)?;
        // SAFETY: valid vocab, token in range (llama.cpp indexes with .at()).
        Ok(TokenAttrs(unsafe {
            sys::llama_vocab_get_attr(self.as_ptr(), token.0)
        }))
    }
}
