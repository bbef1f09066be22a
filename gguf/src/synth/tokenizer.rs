//! A real byte-level BPE tokenizer for synthetic models.
//!
//! 256 byte tokens (GPT-2's byte-to-unicode alphabet, so any UTF-8 text round-trips),
//! merges learnt deterministically from a small built-in corpus, then made-up
//! pronounceable words (consonant-vowel syllables, most with a leading space) to pad up
//! to the requested vocabulary size, and the special tokens at the end. llama.cpp loads
//! it as `tokenizer.ggml.model = "gpt2"` with the `qwen2` pre-tokenizer, which keeps
//! spaces exactly as written.
//!
//! The padding is words, not byte pairs, so that a model with random weights prints
//! random but readable words; [`Vocab::readable`] marks the tokens a reader can see
//! (valid UTF-8, no control characters, not special), and the factory silences the
//! output rows of the others (see `SynthSpec::write_to`).

use std::collections::{BTreeMap, HashSet};

use crate::value::{MetaArray, MetaValue};

/// Special token texts, in the order they are appended after the normal tokens.
pub(crate) const SPECIALS: [&str; 4] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
];
/// The letters of the made-up padding words: each consonant before each vowel.
const CONSONANTS: &str = "bdfgklmnprstvz";
const VOWELS: &str = "aeiou";
/// Number of merges learnt from the corpus before the padding words.
const LEARNT_MERGES: usize = 240;
/// Smallest vocabulary this tokenizer can build.
pub(crate) const MIN_VOCAB: u32 = 256 + SPECIALS.len() as u32 + 16;

/// A ChatML template (the same family Qwen and many MoE models use).
pub(crate) const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. \
A mixture of experts routes every token to a few expert networks and adds their outputs. \
The router picks the top experts for each token; the other experts stay idle, so the \
model reads only a fraction of its weights per token. Offloading the expert tensors to \
host memory keeps the attention weights on the GPU while the experts run on the CPU. \
fn main() { let x = vec![1, 2, 3]; for i in x.iter() { println!(\"{}\", i); } } \
Il était une fois un modèle qui parlait plusieurs langues. Der schnelle Fuchs. \
the of and to in is that for it with as was on be at by this from have or an are \
there their these those which when where while what who how then than them they";

/// GPT-2's reversible byte -> printable char mapping.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
            c
        };
    }
    map
}

/// The tokenizer's content, ready to be written as GGUF metadata.
#[derive(Clone, Debug)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
    pub eot: u32,
}

const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

impl Vocab {
    /// Builds a vocabulary of exactly `n_vocab` tokens (at least [`MIN_VOCAB`]).
    pub(crate) fn build(n_vocab: u32) -> Self {
        let n_vocab = n_vocab.max(MIN_VOCAB) as usize;
        let n_normal = n_vocab - SPECIALS.len();
        let b2c = byte_to_char();
        let mut tokens: Vec<String> = b2c.iter().map(|c| c.to_string()).collect();
        let mut seen: HashSet<String> = tokens.iter().cloned().collect();
        let mut merges = Vec::new();

        let mut push =
            |a: &str, b: &str, tokens: &mut Vec<String>, merges: &mut Vec<String>| -> bool {
                let joined = format!("{a}{b}");
                if seen.contains(&joined) {
                    return false;
                }
                seen.insert(joined.clone());
                merges.push(format!("{a} {b}"));
                tokens.push(joined);
                true
            };

        for (a, b) in learn_merges(&b2c, LEARNT_MERGES.min(n_normal - 256)) {
            push(&a, &b, &mut tokens, &mut merges);
        }
        // Pad with made-up words: syllables, then " syllable", then " syllable syllable"
        // run together, and so on. Each merge joins two tokens that already exist.
        let space = b2c[usize::from(b' ')].to_string();
        let syllables: Vec<String> = CONSONANTS
            .chars()
            .flat_map(|c| VOWELS.chars().map(move |v| format!("{c}{v}")))
            .collect();
        for syllable in &syllables {
            let (c, v) = syllable.split_at(1);
            if tokens.len() >= n_normal {
                break;
            }
            push(c, v, &mut tokens, &mut merges);
        }
        // Words of one more syllable each round, all with a leading space. A round is
        // visited in a scattered order (a stride coprime with its size), so a vocabulary
        // that ends mid-round holds words of every initial, not only those in `b`.
        let mut words: Vec<String> = vec![space];
        'words: while tokens.len() < n_normal {
            let n = (words.len() * syllables.len()) as u64;
            let stride = scatter_stride(n);
            let mut longer = Vec::with_capacity(n as usize);
            for i in 0..n {
                if tokens.len() >= n_normal {
                    break 'words;
                }
                let k = (i * stride % n) as usize;
                let word = &words[k / syllables.len()];
                let syllable = &syllables[k % syllables.len()];
                push(word, syllable, &mut tokens, &mut merges);
                longer.push(format!("{word}{syllable}"));
            }
            words = longer;
        }
        let mut types = vec![TOKEN_NORMAL; tokens.len()];
        let first_special = tokens.len() as u32;
        for s in SPECIALS {
            tokens.push(s.to_owned());
            types.push(TOKEN_CONTROL);
        }
        Self {
            tokens,
            types,
            merges,
            bos: first_special,
            eos: first_special + 1,
            eot: first_special + 3,
        }
    }

    /// For each token, whether it shows as text on its own: normal (not special), its
    /// bytes valid UTF-8, and no control characters. Byte tokens of multi-byte
    /// characters and pieces that split a character are not.
    pub(crate) fn readable(&self) -> Vec<bool> {
        let mut char_to_byte = [0u8; 0x180];
        for (b, c) in byte_to_char().iter().enumerate() {
            char_to_byte[*c as usize] = b as u8;
        }
        self.tokens
            .iter()
            .zip(&self.types)
            .map(|(token, &ty)| {
                if ty != TOKEN_NORMAL {
                    return false;
                }
                let bytes: Vec<u8> = token.chars().map(|c| char_to_byte[c as usize]).collect();
                std::str::from_utf8(&bytes).is_ok_and(|text| !text.chars().any(char::is_control))
            })
            .collect()
    }

    /// The `tokenizer.*` metadata entries.
    pub(crate) fn metadata(&self) -> Vec<(String, MetaValue)> {
        vec![
            ("tokenizer.ggml.model".into(), "gpt2".into()),
            ("tokenizer.ggml.pre".into(), "qwen2".into()),
            (
                "tokenizer.ggml.tokens".into(),
                MetaArray::String(self.tokens.clone()).into(),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                MetaArray::I32(self.types.clone()).into(),
            ),
            (
                "tokenizer.ggml.merges".into(),
                MetaArray::String(self.merges.clone()).into(),
            ),
            ("tokenizer.ggml.bos_token_id".into(), self.bos.into()),
            ("tokenizer.ggml.eos_token_id".into(), self.eos.into()),
            ("tokenizer.ggml.eot_token_id".into(), self.eot.into()),
            ("tokenizer.ggml.padding_token_id".into(), self.eos.into()),
            ("tokenizer.ggml.add_bos_token".into(), true.into()),
            ("tokenizer.ggml.add_eos_token".into(), false.into()),
            ("tokenizer.chat_template".into(), CHAT_TEMPLATE.into()),
        ]
    }
}

/// Classic BPE training on the built-in corpus: repeatedly merge the most frequent
/// adjacent pair (ties broken by the pair's text, so the result is deterministic).
fn learn_merges(b2c: &[char; 256], n: usize) -> Vec<(String, String)> {
    // GPT-2 style words: a leading space belongs to the following word.
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut cur = String::new();
    for ch in CORPUS.chars() {
        if ch == ' ' && !cur.is_empty() {
            *words.entry(encode(&cur, b2c)).or_default() += 1;
            cur.clear();
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        *words.entry(encode(&cur, b2c)).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = words.into_iter().collect();
    let mut merges = Vec::with_capacity(n);
    while merges.len() < n {
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *counts.entry((&p[0], &p[1])).or_default() += c;
            }
        }
        let Some(((a, b), _)) = counts
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
        else {
            break;
        };
        let (a, b) = (a.to_owned(), b.to_owned());
        for (w, _) in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = format!("{a}{b}");
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push((a, b));
    }
    merges
}

/// A step near `n` times the golden ratio's fraction that is coprime with `n`, so
/// `i * step % n` visits every index below `n` once, spread evenly.
fn scatter_stride(n: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut step = (n as f64 * 0.618_033_988_75) as u64 | 1;
    while gcd(step, n) != 1 {
        step += 1;
    }
    step
}

fn encode(word: &str, b2c: &[char; 256]) -> Vec<String> {
    word.bytes()
        .map(|b| b2c[usize::from(b)].to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_has_exact_size_unique_tokens_and_valid_merges() {
        for n in [MIN_VOCAB, 512, 70_000] {
            let v = Vocab::build(n);
            assert_eq!(v.tokens.len(), n as usize);
            let set: HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(set.len(), v.tokens.len(), "tokens must be unique");
            for m in &v.merges {
                let (a, b) = m.split_once(' ').unwrap();
                assert!(
                    set.contains(&a.to_string()) && set.contains(&b.to_string()),
                    "{m}"
                );
                assert!(set.contains(&format!("{a}{b}")), "{m}");
            }
            assert_eq!(v.tokens[v.eot as usize], "<|im_end|>");
        }
    }

    #[test]
    fn padding_is_readable_words() {
        let v = Vocab::build(32_000);
        let readable = v.readable();
        let n_readable = readable.iter().filter(|r| **r).count();
        // Only the 256 byte tokens and a few learnt pieces may be unreadable.
        assert!(n_readable > 31_600, "{n_readable} readable tokens");
        assert!(!readable[usize::from(0xC3u8)], "a lone UTF-8 lead byte");
        assert!(!readable[usize::from(b'\n')], "a control character");
        assert!(readable[usize::from(b'a')]);
        assert!(!readable[v.eos as usize], "special tokens");
        let space = byte_to_char()[usize::from(b' ')];
        let last = &v.tokens[v.tokens.len() - SPECIALS.len() - 1];
        let word = last
            .strip_prefix(space)
            .expect("padding words start with a space");
        assert!(
            word.len() >= 4
                && word
                    .chars()
                    .all(|c| CONSONANTS.contains(c) || VOWELS.contains(c)),
            "{last}"
        );
    }

    #[test]
    fn scatter_stride_visits_every_index_once() {
        for n in [1u64, 2, 70, 4_900, 343_000] {
            let step = scatter_stride(n);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let k = (i * step % n) as usize;
                assert!(!seen[k], "n={n}: {k} twice");
                seen[k] = true;
            }
        }
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let m = byte_to_char();
        let set: HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[usize::from(b' ')], '\u{120}');
        assert_eq!(m[usize::from(b'A')], 'A');
    }
}
