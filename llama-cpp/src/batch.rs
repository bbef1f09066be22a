//! `Batch`: the tokens one [`crate::Context::decode`] call processes.

use llama_cpp_moe_sys as sys;

use crate::vocab::Token;

/// A position in a sequence (0-based).
///
/// A newtype, not an `i32`, so a position and a [`SeqId`] cannot be swapped silently:
/// `Batch::from_tokens(&tokens, Pos(0), SeqId(0))`.
///
/// ```
/// use llama_cpp_moe::Pos;
///
/// let p = Pos(3);
/// assert_eq!(p + 2, Pos(5));
/// assert_eq!(Pos::try_from(7usize), Ok(Pos(7)));
/// assert_eq!(i32::from(p), 3);
/// assert_eq!(usize::try_from(p), Ok(3));
/// assert!(usize::try_from(Pos(-1)).is_err());
/// assert_eq!(p.to_string(), "3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pos(pub i32);

/// A sequence id: tokens of different sequences do not attend to each other.
///
/// ```
/// use llama_cpp_moe::SeqId;
///
/// assert_eq!(SeqId::try_from(2usize), Ok(SeqId(2)));
/// assert_eq!(i32::from(SeqId(2)), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct SeqId(pub i32);

/// A `usize` that does not fit llama.cpp's `i32` positions or sequence ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit in an i32")]
pub struct OutOfRange(pub usize);

macro_rules! i32_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The raw value llama.cpp takes.
            pub const fn get(self) -> i32 {
                self.0
            }
        }

        impl From<$ty> for i32 {
            fn from(v: $ty) -> i32 {
                v.0
            }
        }

        impl TryFrom<usize> for $ty {
            type Error = OutOfRange;

            fn try_from(n: usize) -> Result<Self, OutOfRange> {
                i32::try_from(n).map($ty).map_err(|_| OutOfRange(n))
            }
        }

        /// For indexing: fails for negative values.
        impl TryFrom<$ty> for usize {
            type Error = std::num::TryFromIntError;

            fn try_from(v: $ty) -> Result<usize, Self::Error> {
                usize::try_from(v.0)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
i32_newtype!(Pos);
i32_newtype!(SeqId);

impl Pos {
    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: usize) -> Option<Pos> {
        i32::try_from(n)
            .ok()
            .and_then(|n| self.0.checked_add(n))
            .map(Pos)
    }
}

/// Moves a position by `delta` (positions are shifted, e.g. by [`crate::Context::seq_add`]).
impl std::ops::Add<i32> for Pos {
    type Output = Pos;

    fn add(self, delta: i32) -> Pos {
        Pos(self.0 + delta)
    }
}

impl std::ops::AddAssign<i32> for Pos {
    fn add_assign(&mut self, delta: i32) {
        self.0 += delta;
    }
}

/// Whether a batch token produces output (logits, and embeddings when they are on)
/// after decoding.
///
/// A context with embeddings on ([`crate::ContextParams::with_embeddings`]) outputs every
/// token whatever its flag, as llama.cpp does; [`crate::Context::output_indices`] says
/// which indices have output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Output {
    /// Compute this token's logits.
    Yes,
    /// Only add the token to the KV cache.
    #[default]
    No,
}

impl From<bool> for Output {
    fn from(output: bool) -> Output {
        if output {
            Output::Yes
        } else {
            Output::No
        }
    }
}

/// Why a token could not be added to a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Every token must belong to at least one sequence.
    #[error("a batch token needs at least one sequence id")]
    NoSequence,
    /// Sequence ids are never negative.
    #[error("invalid sequence id {0} (must be >= 0)")]
    NegativeSeqId(SeqId),
    /// Positions are never negative.
    #[error("invalid position {0} (must be >= 0)")]
    NegativePos(Pos),
    /// More tokens than `i32::MAX`, which C cannot count.
    #[error("a batch holds at most i32::MAX tokens")]
    TooLarge,
}

/// Tokens with their positions, sequences and output flags, owned by Rust.
///
/// The batch owns every array that the raw `llama_batch` points to; the raw struct is
/// built only for the duration of a decode call, so nothing C sees can dangle.
///
/// ```
/// use llama_cpp_moe::{Batch, Output, Pos, SeqId, Token};
///
/// let mut batch = Batch::new();
/// batch.add(Token(1), Pos(0), &[SeqId(0)], Output::No).unwrap();
/// batch.add(Token(42), Pos(1), &[SeqId(0)], Output::Yes).unwrap();
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.n_outputs(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    tokens: Vec<Token>,
    pos: Vec<Pos>,
    n_seq_id: Vec<i32>,
    /// Sequence ids of token `i` are `seq_ids[seq_start[i]..seq_start[i] + n_seq_id[i]]`.
    seq_ids: Vec<SeqId>,
    seq_start: Vec<usize>,
    logits: Vec<i8>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` tokens before it reallocates.
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            tokens: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            n_seq_id: Vec::with_capacity(n),
            seq_ids: Vec::with_capacity(n),
            seq_start: Vec::with_capacity(n),
            logits: Vec::with_capacity(n),
        }
    }

    /// A batch of `tokens` for one sequence, at positions `start_pos..`, that outputs
    /// logits only for the last token (the usual prompt batch).
    ///
    /// ```
    /// use llama_cpp_moe::{Batch, Pos, SeqId, Token};
    ///
    /// let batch = Batch::from_tokens(&[Token(1), Token(2), Token(3)], Pos(0), SeqId(0)).unwrap();
    /// assert_eq!(batch.output_indices().collect::<Vec<_>>(), vec![2]);
    /// ```
    pub fn from_tokens(tokens: &[Token], start_pos: Pos, seq: SeqId) -> Result<Self, BatchError> {
        let mut batch = Batch::with_capacity(tokens.len());
        for (i, &token) in tokens.iter().enumerate() {
            let pos = start_pos.checked_add(i).ok_or(BatchError::TooLarge)?;
            let output = Output::from(i + 1 == tokens.len());
            batch.add(token, pos, &[seq], output)?;
        }
        Ok(batch)
    }

    /// Appends `token` at position `pos` in each of `seqs`; [`Output::Yes`] asks for its
    /// logits (and embeddings) after decoding.
    ///
    /// Token ids are checked against the model's vocabulary by [`crate::Context::decode`].
    pub fn add(
        &mut self,
        token: Token,
        pos: Pos,
        seqs: &[SeqId],
        output: Output,
    ) -> Result<(), BatchError> {
        if seqs.is_empty() {
            return Err(BatchError::NoSequence);
        }
        if let Some(&bad) = seqs.iter().find(|s| s.0 < 0) {
            return Err(BatchError::NegativeSeqId(bad));
        }
        if pos.0 < 0 {
            return Err(BatchError::NegativePos(pos));
        }
        if self.tokens.len() >= i32::MAX as usize || seqs.len() > i32::MAX as usize {
            return Err(BatchError::TooLarge);
        }
        self.tokens.push(token);
        self.pos.push(pos);
        self.n_seq_id.push(seqs.len() as i32);
        self.seq_start.push(self.seq_ids.len());
        self.seq_ids.extend_from_slice(seqs);
        self.logits.push(i8::from(output == Output::Yes));
        Ok(())
    }

    /// Removes every token, keeping the allocations.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.n_seq_id.clear();
        self.seq_ids.clear();
        self.seq_start.clear();
        self.logits.clear();
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch holds no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens, in batch order.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The positions, in batch order.
    pub fn positions(&self) -> &[Pos] {
        &self.pos
    }

    /// The sequences token `i` belongs to, or `None` when `i` is out of range.
    pub fn seq_ids(&self, i: usize) -> Option<&[SeqId]> {
        let start = *self.seq_start.get(i)?;
        let n = self.n_seq_id[i] as usize;
        Some(&self.seq_ids[start..start + n])
    }

    /// Sets the output flag of token `i`; returns false when `i` is out of range.
    pub fn set_output(&mut self, i: usize, output: Output) -> bool {
        match self.logits.get_mut(i) {
            Some(flag) => {
                *flag = i8::from(output == Output::Yes);
                true
            }
            None => false,
        }
    }

    /// Whether token `i` outputs logits.
    pub fn is_output(&self, i: usize) -> bool {
        self.logits.get(i).is_some_and(|&f| f != 0)
    }

    /// Number of tokens that output logits.
    pub fn n_outputs(&self) -> usize {
        self.logits.iter().filter(|&&f| f != 0).count()
    }

    /// Batch indices of the tokens that output logits, in order.
    pub fn output_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.logits
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 0)
            .map(|(i, _)| i)
    }

    /// Largest sequence id in the batch, if any.
    pub(crate) fn max_seq_id(&self) -> Option<SeqId> {
        self.seq_ids.iter().copied().max()
    }

    /// Builds the raw struct. Its pointers borrow from `self` and from the returned
    /// pointer table, hence both live in [`RawBatch`].
    pub(crate) fn to_raw(&self) -> RawBatch<'_> {
        let seq_ptrs: Vec<*mut sys::llama_seq_id> = self
            .seq_start
            .iter()
            // C declares the arrays mutable but llama_decode only reads them; SeqId is
            // repr(transparent) over llama_seq_id.
            .map(|&s| {
                self.seq_ids[s..]
                    .as_ptr()
                    .cast::<sys::llama_seq_id>()
                    .cast_mut()
            })
            .collect();
        RawBatch {
            seq_ptrs,
            batch: self,
        }
    }
}

/// A batch ready for C: the pointer table to each token's sequence ids.
pub(crate) struct RawBatch<'a> {
    seq_ptrs: Vec<*mut sys::llama_seq_id>,
    batch: &'a Batch,
}

impl RawBatch<'_> {
    /// The raw `llama_batch`; valid while `self` lives. llama.cpp only reads it.
    pub(crate) fn raw(&mut self) -> sys::llama_batch {
        let b = self.batch;
        sys::llama_batch {
            n_tokens: b.tokens.len() as i32,
            // `Token` is `repr(transparent)` over `llama_token`.
            token: b.tokens.as_ptr().cast::<sys::llama_token>().cast_mut(),
            embd: std::ptr::null_mut(),
            // `Pos` is `repr(transparent)` over `llama_pos`.
            pos: b.pos.as_ptr().cast::<sys::llama_pos>().cast_mut(),
            n_seq_id: b.n_seq_id.as_ptr().cast_mut(),
            seq_id: self.seq_ptrs.as_mut_ptr(),
            logits: b.logits.as_ptr().cast_mut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_records_every_array_and_rejects_bad_entries() {
        let mut b = Batch::new();
        b.add(Token(5), Pos(0), &[SeqId(0), SeqId(2)], Output::No)
            .unwrap();
        b.add(Token(6), Pos(1), &[SeqId(1)], Output::Yes).unwrap();
        assert_eq!(b.seq_ids(0), Some(&[SeqId(0), SeqId(2)][..]));
        assert_eq!(b.seq_ids(1), Some(&[SeqId(1)][..]));
        assert_eq!(b.seq_ids(2), None);
        assert_eq!(b.max_seq_id(), Some(SeqId(2)));
        assert_eq!(
            b.add(Token(1), Pos(2), &[], Output::No),
            Err(BatchError::NoSequence)
        );
        assert_eq!(
            b.add(Token(1), Pos(2), &[SeqId(-1)], Output::No),
            Err(BatchError::NegativeSeqId(SeqId(-1)))
        );
        assert_eq!(
            b.add(Token(1), Pos(-3), &[SeqId(0)], Output::No),
            Err(BatchError::NegativePos(Pos(-3)))
        );
        assert_eq!(b.len(), 2);
        assert!(b.set_output(0, Output::Yes));
        assert!(!b.set_output(9, Output::Yes));
        assert_eq!(b.output_indices().collect::<Vec<_>>(), vec![0, 1]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.n_outputs(), 0);
    }

    #[test]
    fn newtypes_are_transparent_and_convert() {
        assert_eq!(
            std::mem::size_of::<Pos>(),
            std::mem::size_of::<sys::llama_pos>()
        );
        assert_eq!(
            std::mem::size_of::<SeqId>(),
            std::mem::size_of::<sys::llama_seq_id>()
        );
        assert_eq!(Pos::try_from(usize::MAX), Err(OutOfRange(usize::MAX)));
        assert_eq!(Pos(i32::MAX).checked_add(1), None);
        assert_eq!(Pos(1).checked_add(2), Some(Pos(3)));
        let mut p = Pos(1);
        p += 4;
        assert_eq!(p.get(), 5);
        assert_eq!(SeqId(4).to_string(), "4");
    }

    #[test]
    fn raw_batch_points_at_the_owned_arrays() {
        let b = Batch::from_tokens(&[Token(7), Token(8), Token(9)], Pos(4), SeqId(3)).unwrap();
        let mut raw = b.to_raw();
        let r = raw.raw();
        assert_eq!(r.n_tokens, 3);
        assert!(r.embd.is_null());
        // SAFETY: every pointer refers to an array of n_tokens entries owned by `b`, and
        // each seq_id entry to n_seq_id[i] ids, all alive while `raw` is.
        unsafe {
            let toks = std::slice::from_raw_parts(r.token, 3);
            assert_eq!(toks, &[7, 8, 9]);
            assert_eq!(std::slice::from_raw_parts(r.pos, 3), &[4, 5, 6]);
            assert_eq!(std::slice::from_raw_parts(r.logits, 3), &[0, 0, 1]);
            for i in 0..3 {
                assert_eq!(*r.n_seq_id.add(i), 1);
                assert_eq!(**r.seq_id.add(i), 3);
            }
        }
    }
}
