//! `Batch`: the tokens one [`crate::Context::decode`] call processes.

use llama_cpp_moe_sys as sys;

use crate::vocab::Token;

/// A position in a sequence (0-based).
pub type Pos = i32;

/// A sequence id: tokens of different sequences do not attend to each other.
pub type SeqId = i32;

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
/// use llama_cpp_moe::{Batch, Token};
///
/// let mut batch = Batch::new();
/// batch.add(Token(1), 0, &[0], false).unwrap();
/// batch.add(Token(42), 1, &[0], true).unwrap();
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
    /// use llama_cpp_moe::{Batch, Token};
    ///
    /// let batch = Batch::from_tokens(&[Token(1), Token(2), Token(3)], 0, 0).unwrap();
    /// assert_eq!(batch.output_indices().collect::<Vec<_>>(), vec![2]);
    /// ```
    pub fn from_tokens(tokens: &[Token], start_pos: Pos, seq: SeqId) -> Result<Self, BatchError> {
        let mut batch = Batch::with_capacity(tokens.len());
        for (i, &token) in tokens.iter().enumerate() {
            let pos = i32::try_from(i)
                .ok()
                .and_then(|i| start_pos.checked_add(i))
                .ok_or(BatchError::TooLarge)?;
            batch.add(token, pos, &[seq], i + 1 == tokens.len())?;
        }
        Ok(batch)
    }

    /// Appends `token` at position `pos` in each of `seqs`; `output` asks for its logits
    /// (and embeddings) after decoding.
    ///
    /// Token ids are checked against the model's vocabulary by [`crate::Context::decode`].
    pub fn add(
        &mut self,
        token: Token,
        pos: Pos,
        seqs: &[SeqId],
        output: bool,
    ) -> Result<(), BatchError> {
        if seqs.is_empty() {
            return Err(BatchError::NoSequence);
        }
        if let Some(&bad) = seqs.iter().find(|&&s| s < 0) {
            return Err(BatchError::NegativeSeqId(bad));
        }
        if pos < 0 {
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
        self.logits.push(i8::from(output));
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

    /// Turns the output flag of token `i` on or off; returns false when `i` is out of range.
    pub fn set_output(&mut self, i: usize, output: bool) -> bool {
        match self.logits.get_mut(i) {
            Some(flag) => {
                *flag = i8::from(output);
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
        let seq_ptrs: Vec<*mut SeqId> = self
            .seq_start
            .iter()
            // C declares the arrays mutable but llama_decode only reads them.
            .map(|&s| self.seq_ids[s..].as_ptr().cast_mut())
            .collect();
        RawBatch {
            seq_ptrs,
            batch: self,
        }
    }
}

/// A batch ready for C: the pointer table to each token's sequence ids.
pub(crate) struct RawBatch<'a> {
    seq_ptrs: Vec<*mut SeqId>,
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
            pos: b.pos.as_ptr().cast_mut(),
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
        b.add(Token(5), 0, &[0, 2], false).unwrap();
        b.add(Token(6), 1, &[1], true).unwrap();
        assert_eq!(b.seq_ids(0), Some(&[0, 2][..]));
        assert_eq!(b.seq_ids(1), Some(&[1][..]));
        assert_eq!(b.seq_ids(2), None);
        assert_eq!(b.max_seq_id(), Some(2));
        assert_eq!(b.add(Token(1), 2, &[], false), Err(BatchError::NoSequence));
        assert_eq!(
            b.add(Token(1), 2, &[-1], false),
            Err(BatchError::NegativeSeqId(-1))
        );
        assert_eq!(
            b.add(Token(1), -3, &[0], false),
            Err(BatchError::NegativePos(-3))
        );
        assert_eq!(b.len(), 2);
        assert!(b.set_output(0, true));
        assert!(!b.set_output(9, true));
        assert_eq!(b.output_indices().collect::<Vec<_>>(), vec![0, 1]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.n_outputs(), 0);
    }

    #[test]
    fn raw_batch_points_at_the_owned_arrays() {
        let b = Batch::from_tokens(&[Token(7), Token(8), Token(9)], 4, 3).unwrap();
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
