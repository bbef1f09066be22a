//! Sequence/memory (KV cache) operations and the per-buffer-type memory breakdown.

use std::ops::{Bound, RangeBounds};
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

use super::Context;
use crate::backend::BufferType;
use crate::batch::{Pos, SeqId};

/// Why a memory operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The context has no memory (KV cache) at all.
    #[error("the context has no memory")]
    NoMemory,
    /// A sequence id is negative or not below the context's `n_seq_max`.
    #[error("sequence id {seq} out of range (context holds {n_seq_max} sequences)")]
    InvalidSeqId {
        /// The offending id.
        seq: SeqId,
        /// The context's sequence count.
        n_seq_max: u32,
    },
    /// The memory cannot remove part of a sequence (recurrent models); whole
    /// sequences can always be removed.
    #[error("the memory cannot remove part of a sequence")]
    PartialRemove,
    /// The memory does not support shifting positions (recurrent memory, M-RoPE), or
    /// llama.cpp's shift would crash on its K cache: BF16, or quantised with heads
    /// llama.cpp does not rotate.
    #[error("the memory does not support position shifts")]
    ShiftUnsupported,
    /// A position range bound is negative.
    #[error("position {0} is negative")]
    NegativePos(Pos),
    /// The divisor of [`Context::seq_div`] must be greater than 1.
    #[error("position divisor must be > 1, got {0}")]
    InvalidDivisor(i32),
    /// llama.cpp could not report the memory breakdown.
    #[error("llama.cpp could not report the memory breakdown")]
    Breakdown,
}

/// Memory one buffer type holds for a context: weights, KV cache, compute buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryBreakdownRow {
    /// The ggml buffer type, e.g. `CPU`, `CUDA0`, `CUDA_Host` (`None` if llama.cpp
    /// reported a row without one). See [`MemoryBreakdownRow::buffer_type_name`].
    pub buffer_type: Option<BufferType>,
    /// Whether the buffer type lives in host memory.
    pub is_host: bool,
    /// Bytes of model weights.
    pub model_bytes: usize,
    /// Bytes of context state (KV cache, recurrent state).
    pub context_bytes: usize,
    /// Bytes of compute buffers.
    pub compute_bytes: usize,
}

impl MemoryBreakdownRow {
    /// The buffer type's name, for display and JSON; empty when there is none.
    pub fn buffer_type_name(&self) -> String {
        self.buffer_type.map(|b| b.name()).unwrap_or_default()
    }

    /// Everything this buffer type holds.
    pub fn total_bytes(&self) -> usize {
        self.model_bytes + self.context_bytes + self.compute_bytes
    }
}

/// Converts a position range to llama.cpp's half-open `[p0, p1)`, where `-1` means
/// "from the start" / "to the end". A negative position given here would silently mean
/// the same to llama.cpp, so it is an error instead.
fn bounds(
    positions: impl RangeBounds<Pos>,
) -> Result<(sys::llama_pos, sys::llama_pos), MemoryError> {
    let check = |p: &Pos| {
        if p.0 < 0 {
            Err(MemoryError::NegativePos(*p))
        } else {
            Ok(p.0)
        }
    };
    let p0 = match positions.start_bound() {
        Bound::Included(p) => check(p)?,
        Bound::Excluded(p) => check(p)?.saturating_add(1),
        Bound::Unbounded => -1,
    };
    let p1 = match positions.end_bound() {
        Bound::Included(p) => check(p)?.saturating_add(1),
        Bound::Excluded(p) => check(p)?,
        Bound::Unbounded => -1,
    };
    Ok((p0, p1))
}

/// Whether [`Context::clear_memory`] also zeroes the memory's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClearData {
    /// Only forget the cells (enough for correctness; the old data is overwritten).
    Keep,
    /// Also zero the buffers.
    Zero,
}

impl Context<'_> {
    fn memory(&self) -> Result<sys::llama_memory_t, MemoryError> {
        // SAFETY: valid context pointer.
        let mem = unsafe { sys::llama_get_memory(self.ptr.as_ptr()) };
        if mem.is_null() {
            Err(MemoryError::NoMemory)
        } else {
            Ok(mem)
        }
    }

    fn check_seq(&self, seq: SeqId) -> Result<(), MemoryError> {
        let n_seq_max = self.n_seq_max();
        if seq.0 < 0 || seq.0 as u32 >= n_seq_max {
            return Err(MemoryError::InvalidSeqId { seq, n_seq_max });
        }
        Ok(())
    }

    /// Empties the memory; [`ClearData::Zero`] also zeroes the buffers.
    ///
    /// C equivalent: `llama_memory_clear(mem, data)`.
    pub fn clear_memory(&mut self, data: ClearData) -> Result<(), MemoryError> {
        let mem = self.memory()?;
        self.forget_outputs();
        // SAFETY: valid memory handle owned by the context.
        unsafe { sys::llama_memory_clear(mem, data == ClearData::Zero) };
        Ok(())
    }

    /// Removes the tokens of `seq` (every sequence when `None`) at `positions`: a range
    /// such as `Pos(4)..`, `..Pos(8)`, `Pos(2)..Pos(5)` or `..` for all.
    ///
    /// C equivalent: `llama_memory_seq_rm(mem, seq, p0, p1)`.
    ///
    /// ```no_run
    /// # use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams, Pos, SeqId};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let mut ctx = Context::new(&model, &ContextParams::default())?;
    /// // Forget everything of sequence 0 from position 16 on.
    /// ctx.seq_rm(Some(SeqId(0)), Pos(16)..)?;
    /// // Forget every sequence.
    /// ctx.seq_rm(None, ..)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn seq_rm(
        &mut self,
        seq: Option<SeqId>,
        positions: impl RangeBounds<Pos>,
    ) -> Result<(), MemoryError> {
        let mem = self.memory()?;
        if let Some(s) = seq {
            self.check_seq(s)?;
        }
        self.tail_output = None;
        let (p0, p1) = bounds(positions)?;
        // SAFETY: valid memory handle; the sequence id is -1 or in range.
        let ok = unsafe { sys::llama_memory_seq_rm(mem, seq.map_or(-1, SeqId::get), p0, p1) };
        if ok {
            Ok(())
        } else {
            Err(MemoryError::PartialRemove)
        }
    }

    /// Makes the tokens of `src` at `positions` (`..` for all) also belong to `dst`.
    ///
    /// C equivalent: `llama_memory_seq_cp(mem, src, dst, p0, p1)`.
    pub fn seq_cp(
        &mut self,
        src: SeqId,
        dst: SeqId,
        positions: impl RangeBounds<Pos>,
    ) -> Result<(), MemoryError> {
        let mem = self.memory()?;
        self.check_seq(src)?;
        self.check_seq(dst)?;
        self.tail_output = None;
        let (p0, p1) = bounds(positions)?;
        // SAFETY: valid memory handle; both ids are in range (llama.cpp asserts that).
        unsafe { sys::llama_memory_seq_cp(mem, src.0, dst.0, p0, p1) };
        Ok(())
    }

    /// Removes every token that does not belong to `seq`. With one cache per sequence
    /// (`with_kv_unified(false)`, the default) only the cache holding `seq` is touched.
    ///
    /// C equivalent: `llama_memory_seq_keep(mem, seq)`.
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<(), MemoryError> {
        let mem = self.memory()?;
        self.check_seq(seq)?;
        self.tail_output = None;
        // SAFETY: valid memory handle; the id is in range.
        unsafe { sys::llama_memory_seq_keep(mem, seq.0) };
        Ok(())
    }

    /// Adds `delta` to the positions of `seq`'s tokens at `positions` (context shifting).
    /// Cells shared with another sequence (after [`Context::seq_cp`] in a unified cache)
    /// move for both.
    ///
    /// C equivalent: `llama_memory_seq_add(mem, seq, p0, p1, delta)`.
    pub fn seq_add(
        &mut self,
        seq: SeqId,
        positions: impl RangeBounds<Pos>,
        delta: i32,
    ) -> Result<(), MemoryError> {
        let mem = self.shiftable_memory()?;
        self.check_seq(seq)?;
        self.tail_output = None;
        let (p0, p1) = bounds(positions)?;
        // SAFETY: valid memory handle that supports shifts; the id is in range.
        unsafe { sys::llama_memory_seq_add(mem, seq.0, p0, p1, delta) };
        Ok(())
    }

    /// Divides the positions of `seq`'s tokens at `positions` by `d` (> 1).
    ///
    /// C equivalent: `llama_memory_seq_div(mem, seq, p0, p1, d)`.
    pub fn seq_div(
        &mut self,
        seq: SeqId,
        positions: impl RangeBounds<Pos>,
        d: i32,
    ) -> Result<(), MemoryError> {
        if d <= 1 {
            return Err(MemoryError::InvalidDivisor(d));
        }
        let mem = self.shiftable_memory()?;
        self.check_seq(seq)?;
        self.tail_output = None;
        let (p0, p1) = bounds(positions)?;
        // SAFETY: valid memory handle that supports shifts; the id is in range; d > 1.
        unsafe { sys::llama_memory_seq_div(mem, seq.0, p0, p1, d) };
        Ok(())
    }

    fn shiftable_memory(&self) -> Result<sys::llama_memory_t, MemoryError> {
        let mem = self.memory()?;
        // SAFETY: valid memory handle.
        if self.k_shift_safe && unsafe { sys::llama_memory_can_shift(mem) } {
            Ok(mem)
        } else {
            Err(MemoryError::ShiftUnsupported)
        }
    }

    /// Smallest position of `seq` in memory; `None` when the sequence is empty.
    ///
    /// C equivalent: `llama_memory_seq_pos_min(mem, seq)`.
    pub fn seq_pos_min(&self, seq: SeqId) -> Result<Option<Pos>, MemoryError> {
        let mem = self.memory()?;
        self.check_seq(seq)?;
        // SAFETY: valid memory handle; the id is in range.
        let p = unsafe { sys::llama_memory_seq_pos_min(mem, seq.0) };
        Ok((p >= 0).then_some(Pos(p)))
    }

    /// Largest position of `seq` in memory; `None` when the sequence is empty.
    ///
    /// C equivalent: `llama_memory_seq_pos_max(mem, seq)`.
    pub fn seq_pos_max(&self, seq: SeqId) -> Result<Option<Pos>, MemoryError> {
        let mem = self.memory()?;
        self.check_seq(seq)?;
        // SAFETY: valid memory handle; the id is in range.
        let p = unsafe { sys::llama_memory_seq_pos_max(mem, seq.0) };
        Ok((p >= 0).then_some(Pos(p)))
    }

    /// Memory per buffer type: model weights, context (KV cache) and compute buffers.
    /// With MoE offload this shows the experts' bytes in a host buffer type and the rest
    /// on the accelerator.
    ///
    /// C equivalent: `llama_memory_breakdown_print(ctx)` (as data, via the shim).
    ///
    /// ```no_run
    /// # use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
    /// # fn main() -> llama_cpp_moe::Result<()> {
    /// # let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let ctx = Context::new(&model, &ContextParams::default())?;
    /// for row in ctx.memory_breakdown()? {
    ///     println!("{:>12} model {} KV {} compute {}", row.buffer_type_name(),
    ///              row.model_bytes, row.context_bytes, row.compute_bytes);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn memory_breakdown(&self) -> Result<Vec<MemoryBreakdownRow>, MemoryError> {
        // SAFETY: valid context; a NULL output with capacity 0 only counts the rows.
        let n =
            unsafe { sys::llama_moe_memory_breakdown(self.ptr.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(MemoryError::Breakdown);
        }
        let empty = sys::llama_moe_memory_row {
            buft_name: std::ptr::null(),
            is_host: 0,
            model: 0,
            context: 0,
            compute: 0,
            buft: std::ptr::null_mut(),
        };
        let mut rows = vec![empty; n as usize];
        // SAFETY: `rows` has room for `rows.len()` entries.
        let m = unsafe {
            sys::llama_moe_memory_breakdown(self.ptr.as_ptr(), rows.as_mut_ptr(), rows.len())
        };
        if m < 0 {
            return Err(MemoryError::Breakdown);
        }
        rows.truncate(m as usize);
        Ok(rows
            .iter()
            .map(|r| MemoryBreakdownRow {
                // SAFETY: breakdown rows are keyed by process-lived ggml buffer types.
                buffer_type: NonNull::new(r.buft).map(|p| unsafe { BufferType::from_raw(p) }),
                is_host: r.is_host != 0,
                model_bytes: r.model,
                context_bytes: r.context,
                compute_bytes: r.compute,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_half_open_bounds_and_negative_positions_are_errors() {
        assert_eq!(bounds(..), Ok((-1, -1)));
        assert_eq!(bounds(Pos(3)..), Ok((3, -1)));
        assert_eq!(bounds(..Pos(8)), Ok((-1, 8)));
        assert_eq!(bounds(..=Pos(8)), Ok((-1, 9)));
        assert_eq!(bounds(Pos(2)..Pos(5)), Ok((2, 5)));
        assert_eq!(bounds(Pos(2)..=Pos(5)), Ok((2, 6)));
        let excluded_start = (Bound::Excluded(Pos(2)), Bound::Unbounded);
        assert_eq!(bounds(excluded_start), Ok((3, -1)));
        assert_eq!(bounds(..=Pos(i32::MAX)), Ok((-1, i32::MAX)));
        // Negative positions would mean "everything" to llama.cpp.
        assert_eq!(bounds(Pos(-7)..), Err(MemoryError::NegativePos(Pos(-7))));
        assert_eq!(bounds(..Pos(-2)), Err(MemoryError::NegativePos(Pos(-2))));
    }
}
