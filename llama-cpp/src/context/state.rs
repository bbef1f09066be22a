//! Saving and restoring a context's state (its memory: the KV cache or recurrent state),
//! whole or one sequence at a time, to a `Vec<u8>` or to a file.
//!
//! llama.cpp's state holds the memory only, not the last decode's logits: a restored
//! context continues by decoding at least one token (the usual way: save after all but
//! the last prompt token, restore, then decode the last one; see [`Context::state_save`]).
//!
//! Loading checks what it can before llama.cpp reads anything: the architecture name
//! at the head of a context state (llama.cpp would allocate whatever length the bytes
//! claim), the tag of a sequence state, a file's header and its token count against
//! the file's size, sequence ids, and the positions of the first cells (llama.cpp stores
//! negative ones silently). The rest llama.cpp checks itself (layer count, K/V types,
//! row sizes, cell counts) and refuses with an error that becomes
//! [`StateError::Rejected`]. State files are read whole into memory and restored through
//! the in-memory API, whose reader stops at the end of the data (llama.cpp's file reader
//! does not, and aborts on a truncated sequence file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use llama_cpp_moe_sys as sys;

use super::Context;
use crate::batch::SeqId;
use crate::error::PathError;
use crate::ffi::path_to_cstring;
use crate::vocab::Token;

/// The tag llama.cpp writes before a sequence state in memory (files carry their own
/// header instead); `llama_context::state_seq_get_data` in the pinned source.
const SEQ_STATE_MAGIC: u32 = 0xaf14_3cd8;

/// Longest architecture name shown in [`StateError::WrongModel`].
const MAX_SHOWN_ARCH: usize = 64;

/// Why a state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The path cannot be handed to C.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A sequence id is negative or not below the context's `n_seq_max`.
    #[error("sequence id {seq} out of range (context holds {n_seq_max} sequences)")]
    InvalidSeqId {
        /// The offending id.
        seq: SeqId,
        /// The context's sequence count.
        n_seq_max: u32,
    },
    /// A state file could not be read.
    #[error("reading state file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// More tokens than a state file can record (its count is 32 bits).
    #[error("{count} tokens do not fit a state file (at most {max})")]
    TooManyTokens {
        /// Tokens given.
        count: usize,
        /// The format's limit.
        max: usize,
    },
    /// The bytes or the file are not a state of the expected kind: truncated, another
    /// format, or a count that the data cannot hold.
    #[error("not a valid {kind}: {reason}")]
    Invalid {
        /// What was expected ("context state", "sequence state file", ...).
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The state was saved by a model of another architecture.
    #[error("the state is of a {found:?} model, this context runs {expected:?}")]
    WrongModel {
        /// This context's architecture.
        expected: String,
        /// The state's (lossily decoded, shortened).
        found: String,
    },
    /// llama.cpp refused the state (another layer count, K/V type, row size, more cells
    /// than the context holds, ...). The memory being restored into (all of it for a
    /// context state, the destination sequence for a sequence state) is left empty.
    #[error("llama.cpp could not restore the state: {reason}")]
    Rejected {
        /// llama.cpp's error lines, or what the return value said.
        reason: String,
    },
    /// llama.cpp could not save the state.
    #[error("llama.cpp could not save the state: {reason}")]
    SaveFailed {
        /// llama.cpp's error lines, or what the return value said.
        reason: String,
    },
    /// A [`DeviceSeqState`] that another context saved, or that a later save of the
    /// same sequence superseded (llama.cpp keeps one device copy per sequence).
    #[error("the device state of sequence {seq} is not the latest one saved in this context")]
    StaleDeviceState {
        /// The sequence it was saved from.
        seq: SeqId,
    },
}

/// How much of a sequence's memory a sequence state covers (`llama_state_seq_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SeqStateScope {
    /// Everything the memory holds for the sequence (`LLAMA_STATE_SEQ_FLAGS_NONE`).
    #[default]
    All,
    /// Only the partial part: the sliding-window cache of an iSWA model, the recurrent
    /// state of a hybrid one (`LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY`); a plain KV cache
    /// saves everything either way. Restore it with the same scope.
    PartialOnly,
}

impl SeqStateScope {
    fn flags(self) -> sys::llama_state_seq_flags {
        match self {
            SeqStateScope::All => sys::LLAMA_STATE_SEQ_FLAGS_NONE,
            SeqStateScope::PartialOnly => sys::LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY,
        }
    }
}

/// A sequence state whose tensor data stays in the context's own (device) buffers
/// (`LLAMA_STATE_SEQ_FLAGS_ON_DEVICE`): faster than a host copy, but it can only go
/// back into the context that saved it, and only until that context saves the same
/// sequence on the device again. [`Context::seq_state_load_on_device`] checks both,
/// since llama.cpp would abort on a state it no longer holds.
#[derive(Debug)]
pub struct DeviceSeqState {
    context: u64,
    seq: SeqId,
    generation: u64,
    scope: SeqStateScope,
    /// The host part (the cells' positions and sequences; no tensor data).
    bytes: Vec<u8>,
}

impl DeviceSeqState {
    /// The sequence it was saved from.
    pub fn seq(&self) -> SeqId {
        self.seq
    }

    /// Bytes held in host memory (the tensor data lives in the context).
    pub fn host_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// The context's record of its device sequence states: its identity and the latest
/// save of each sequence.
#[derive(Debug)]
pub(crate) struct DeviceStates {
    context: u64,
    latest: HashMap<SeqId, u64>,
    next: u64,
}

impl Default for DeviceStates {
    fn default() -> Self {
        static CONTEXTS: AtomicU64 = AtomicU64::new(0);
        DeviceStates {
            context: CONTEXTS.fetch_add(1, Ordering::Relaxed),
            latest: HashMap::new(),
            next: 0,
        }
    }
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> StateError {
    StateError::Invalid {
        kind,
        reason: reason.into(),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// llama.cpp's error lines since the call began, or `fallback`.
fn reason(fallback: &str) -> String {
    crate::logging::take_last_error().unwrap_or_else(|| fallback.to_owned())
}

fn token_ptr(tokens: &[Token]) -> *const sys::llama_token {
    // `Token` is `repr(transparent)` over `llama_token`.
    tokens.as_ptr().cast()
}

/// Most tokens a state file records (its token count is a `u32`).
const MAX_FILE_TOKENS: usize = u32::MAX as usize;

fn check_file_tokens(tokens: &[Token]) -> Result<u32, StateError> {
    u32::try_from(tokens.len()).map_err(|_| StateError::TooManyTokens {
        count: tokens.len(),
        max: MAX_FILE_TOKENS,
    })
}

/// A state file read whole: its token list and the state bytes after it, the header
/// (magic, version, token count) checked, the count against the file's size.
fn read_state_file(
    path: &Path,
    kind: &'static str,
    magic: u32,
    version: u32,
) -> Result<(Vec<Token>, Vec<u8>), StateError> {
    let mut bytes = std::fs::read(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let len = bytes.len();
    let (Some(found_magic), Some(found_version), Some(count)) = (
        read_u32(&bytes, 0),
        read_u32(&bytes, 4),
        read_u32(&bytes, 8),
    ) else {
        return Err(invalid(
            kind,
            format!("{len} bytes, shorter than the 12-byte header"),
        ));
    };
    if found_magic != magic {
        return Err(invalid(
            kind,
            format!("magic {found_magic:#010x}, expected {magic:#010x}"),
        ));
    }
    if found_version != version {
        return Err(invalid(
            kind,
            format!("version {found_version}, this llama.cpp reads {version}"),
        ));
    }
    let room = (len - 12) / 4;
    if count as usize > room {
        return Err(invalid(
            kind,
            format!("{count} tokens claimed, the file has room for {room}"),
        ));
    }
    let state_at = 12 + 4 * count as usize;
    let tokens = bytes[12..state_at]
        .chunks_exact(4)
        .map(|c| Token(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    bytes.drain(..state_at);
    Ok((tokens, bytes))
}

impl Context<'_> {
    fn check_state_seq(&self, seq: SeqId) -> Result<(), StateError> {
        let n_seq_max = self.n_seq_max();
        if seq.0 < 0 || seq.0 as u32 >= n_seq_max {
            return Err(StateError::InvalidSeqId { seq, n_seq_max });
        }
        Ok(())
    }

    /// Checks the architecture name a context state starts with (a `u32` length, then
    /// the bytes): llama.cpp allocates whatever length is written there before it
    /// compares. `head` holds at least the first bytes of the state.
    fn check_state_arch(&self, head: &[u8], kind: &'static str) -> Result<(), StateError> {
        let expected = self.model.arch().unwrap_or_default();
        let Some(n) = read_u32(head, 0) else {
            return Err(invalid(
                kind,
                format!("{} bytes, shorter than the architecture name", head.len()),
            ));
        };
        let n = n as usize;
        let name = head.get(4..4usize.saturating_add(n));
        if name == Some(expected.as_bytes()) {
            return Ok(());
        }
        match name {
            Some(name) if n <= MAX_SHOWN_ARCH => Err(StateError::WrongModel {
                expected,
                found: String::from_utf8_lossy(name).into_owned(),
            }),
            _ if n > MAX_SHOWN_ARCH => Err(invalid(
                kind,
                format!("architecture name of {n} bytes, this context's is {expected:?}"),
            )),
            _ => Err(invalid(
                kind,
                format!(
                    "truncated in the architecture name ({n} bytes, {} left)",
                    head.len().saturating_sub(4)
                ),
            )),
        }
    }

    /// Checks the cells at the head of a memory state (`mem`: the bytes after the
    /// architecture name or the sequence tag): llama.cpp stores their positions as
    /// given, and a negative one leaves the memory inconsistent (a cell that counts as
    /// empty yet belongs to a sequence, whose positions then start below 0) without any
    /// error. Only the first stream with cells of the first cache can be walked without
    /// knowing the memory's layer layout; [`Context::check_restored`] catches the rest.
    /// Layouts this does not know (recurrent and hybrid memories) are left to llama.cpp.
    fn check_state_cells(&self, mem: &[u8], kind: &'static str) -> Result<(), StateError> {
        let model = self.model.as_ptr();
        // SAFETY: valid model pointer.
        if unsafe { sys::llama_model_is_recurrent(model) || sys::llama_model_is_hybrid(model) } {
            return Ok(());
        }
        // SAFETY: valid model pointer.
        let rope = unsafe { sys::llama_model_rope_type(model) };
        // A cell carries 2D positions (M-RoPE) or its token (the per-layer n-gram
        // embeddings of qwen4exp) after its position and sequence count: 3 x 4 bytes.
        let ext = rope == sys::LLAMA_ROPE_TYPE_MROPE
            || rope == sys::LLAMA_ROPE_TYPE_IMROPE
            || self.model.arch().as_deref() == Some("qwen4exp");
        let ext_len = if ext { 12 } else { 0 };
        // Anything short or implausible here is llama.cpp's to refuse.
        let Some(n_stream) = read_u32(mem, 0) else {
            return Ok(());
        };
        let mut at = 4usize;
        for _ in 0..n_stream.min(self.n_seq_max()) {
            let Some(cell_count) = read_u32(mem, at) else {
                return Ok(());
            };
            at += 4;
            if cell_count == 0 {
                continue;
            }
            for cell in 0..cell_count.min(self.n_ctx()) {
                let (Some(pos), Some(n_seq)) = (read_u32(mem, at), read_u32(mem, at + 4)) else {
                    return Ok(());
                };
                let pos = pos as i32;
                if pos < 0 {
                    return Err(invalid(
                        kind,
                        format!("cell {cell} is at negative position {pos}"),
                    ));
                }
                at = at
                    .saturating_add(8 + ext_len)
                    .saturating_add((n_seq as usize).saturating_mul(4));
            }
            return Ok(());
        }
        Ok(())
    }

    /// After a restore: no sequence may start below position 0 (see
    /// [`Context::check_state_cells`]). A memory that does is emptied.
    fn check_restored(
        &mut self,
        seqs: std::ops::Range<i32>,
        kind: &'static str,
    ) -> Result<(), StateError> {
        // SAFETY: valid context.
        let mem = unsafe { sys::llama_get_memory(self.ptr.as_ptr()) };
        if mem.is_null() {
            return Ok(());
        }
        for seq in seqs {
            // SAFETY: valid memory handle; `seq` is below n_seq_max.
            let (min, max) = unsafe {
                (
                    sys::llama_memory_seq_pos_min(mem, seq),
                    sys::llama_memory_seq_pos_max(mem, seq),
                )
            };
            if min < -1 || (min < 0 && max >= 0) {
                // SAFETY: valid memory handle.
                unsafe { sys::llama_memory_clear(mem, true) };
                return Err(invalid(
                    kind,
                    format!("sequence {seq} starts at position {min}; the memory was cleared"),
                ));
            }
        }
        Ok(())
    }

    /// Bytes [`Context::state_save`] would return now.
    ///
    /// C equivalent: `llama_state_get_size(ctx)`.
    pub fn state_size(&self) -> usize {
        // SAFETY: valid context; the size is measured by a writer that copies nothing.
        unsafe { sys::llama_state_get_size(self.ptr.as_ptr()) }
    }

    /// The whole state (every sequence in memory), to restore with
    /// [`Context::state_load`] into this or a new context of the same model with the
    /// same memory parameters.
    ///
    /// C equivalent: `llama_state_get_size` + `llama_state_get_data`.
    ///
    /// ```no_run
    /// # use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams, Pos, SeqId};
    /// # use llama_cpp_moe::{AddSpecial, ParseSpecial};
    /// # fn main() -> llama_cpp_moe::Result<()> {
    /// # let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let prompt = model.vocab().tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
    /// let (body, last) = prompt.split_at(prompt.len() - 1);
    /// let mut ctx = Context::new(&model, &ContextParams::default())?;
    /// ctx.decode(&Batch::from_tokens(body, Pos(0), SeqId(0))?)?;
    /// let state = ctx.state_save()?;
    ///
    /// let mut fresh = Context::new(&model, &ContextParams::default())?;
    /// fresh.state_load(&state)?;
    /// // The state holds no logits: decode the last prompt token to continue.
    /// fresh.decode(&Batch::from_tokens(last, Pos(body.len() as i32), SeqId(0))?)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn state_save(&self) -> Result<Vec<u8>, StateError> {
        let size = self.state_size();
        if size == 0 {
            return Err(StateError::SaveFailed {
                reason: reason("llama_state_get_size returned 0"),
            });
        }
        let mut buf = vec![0u8; size];
        crate::logging::clear_last_error();
        // SAFETY: valid context; `buf` is writable for `size` bytes and llama.cpp writes
        // at most that many (it throws, and returns 0, past the end).
        let n = unsafe { sys::llama_state_get_data(self.ptr.as_ptr(), buf.as_mut_ptr(), size) };
        if n == 0 || n > size {
            return Err(StateError::SaveFailed {
                reason: reason("llama_state_get_data returned 0"),
            });
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Replaces the whole memory with a state from [`Context::state_save`]. The last
    /// decode's outputs are forgotten: decode a token before sampling.
    ///
    /// # Errors
    /// [`StateError::WrongModel`] or [`StateError::Invalid`] for bytes that are not a
    /// state of this model (nothing changes then); [`StateError::Rejected`] when
    /// llama.cpp refuses it (the memory is left empty); [`StateError::Invalid`] also
    /// when bytes follow the state (it was restored).
    ///
    /// C equivalent: `llama_state_set_data(ctx, data, len)`.
    pub fn state_load(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.load_whole(data, "context state")
    }

    fn load_whole(&mut self, data: &[u8], kind: &'static str) -> Result<(), StateError> {
        self.check_state_arch(data, kind)?;
        let arch_len = read_u32(data, 0).unwrap_or_default() as usize;
        self.check_state_cells(&data[4 + arch_len..], kind)?;
        self.forget_outputs();
        crate::logging::clear_last_error();
        // SAFETY: valid context; llama.cpp reads at most `data.len()` bytes (its reader
        // throws past the end, and the call catches it); the architecture name's
        // length was checked above, so it allocates no more than the data holds.
        let n = unsafe { sys::llama_state_set_data(self.ptr.as_ptr(), data.as_ptr(), data.len()) };
        if n == 0 {
            return Err(StateError::Rejected {
                reason: reason("llama_state_set_data returned 0"),
            });
        }
        self.check_restored(0..self.n_seq_max() as i32, kind)?;
        if n != data.len() {
            return Err(invalid(
                kind,
                format!("{} bytes follow the state", data.len().saturating_sub(n)),
            ));
        }
        Ok(())
    }

    /// Writes the whole state to `path`, with `tokens` (typically the tokens in memory)
    /// recorded before it; [`Context::state_load_file`] gives them back.
    ///
    /// C equivalent: `llama_state_save_file(ctx, path, tokens, n)`.
    pub fn state_save_file(
        &self,
        path: impl AsRef<Path>,
        tokens: &[Token],
    ) -> Result<(), StateError> {
        check_file_tokens(tokens)?;
        let c_path = path_to_cstring(path.as_ref())?;
        crate::logging::clear_last_error();
        // SAFETY: valid context; NUL-terminated path; `tokens` holds `tokens.len()`
        // tokens (a count that fits the file's u32). The call catches llama.cpp's
        // exceptions (an unwritable file).
        let ok = unsafe {
            sys::llama_state_save_file(
                self.ptr.as_ptr(),
                c_path.as_ptr(),
                token_ptr(tokens),
                tokens.len(),
            )
        };
        if ok {
            Ok(())
        } else {
            Err(StateError::SaveFailed {
                reason: reason("llama_state_save_file returned false"),
            })
        }
    }

    /// Replaces the whole memory with the state in a file from
    /// [`Context::state_save_file`] and returns the tokens recorded with it. The last
    /// decode's outputs are forgotten.
    ///
    /// The file is read whole and restored through `llama_state_set_data`, not with
    /// `llama_state_load_file`: llama.cpp's file reader takes a short read at the end
    /// of a truncated file for a full one and goes on with values it never read.
    ///
    /// # Errors
    /// As [`Context::state_load`], plus [`StateError::Io`].
    pub fn state_load_file(&mut self, path: impl AsRef<Path>) -> Result<Vec<Token>, StateError> {
        const KIND: &str = "context state file";
        let (tokens, state) = read_state_file(
            path.as_ref(),
            KIND,
            sys::LLAMA_SESSION_MAGIC,
            sys::LLAMA_SESSION_VERSION,
        )?;
        self.load_whole(&state, KIND)?;
        Ok(tokens)
    }

    /// Bytes [`Context::seq_state_save`] would return now for `seq` with `scope`.
    ///
    /// C equivalent: `llama_state_seq_get_size(ctx, seq)` for [`SeqStateScope::All`],
    /// `llama_state_seq_get_size_ext(ctx, seq, flags)` otherwise.
    pub fn seq_state_size(&self, seq: SeqId, scope: SeqStateScope) -> Result<usize, StateError> {
        self.check_state_seq(seq)?;
        let ctx = self.ptr.as_ptr();
        // SAFETY: valid context; the sequence id is in range. The plain call is the
        // _ext one with no flags.
        Ok(unsafe {
            match scope {
                SeqStateScope::All => sys::llama_state_seq_get_size(ctx, seq.0),
                _ => sys::llama_state_seq_get_size_ext(ctx, seq.0, scope.flags()),
            }
        })
    }

    /// The state of one sequence, to restore with [`Context::seq_state_load`] into any
    /// sequence of this or another context of the same model.
    ///
    /// C equivalent: `llama_state_seq_get_data(ctx, buf, len, seq)` for
    /// [`SeqStateScope::All`], `llama_state_seq_get_data_ext(ctx, buf, len, seq, flags)`
    /// otherwise.
    pub fn seq_state_save(&self, seq: SeqId, scope: SeqStateScope) -> Result<Vec<u8>, StateError> {
        let size = self.seq_state_size(seq, scope)?;
        let mut buf = vec![0u8; size];
        crate::logging::clear_last_error();
        let (ctx, dst) = (self.ptr.as_ptr(), buf.as_mut_ptr());
        // SAFETY: valid context; the id is in range; `buf` is writable for `size` bytes
        // and llama.cpp writes at most that many (it throws, and returns 0, past them).
        let n = unsafe {
            match scope {
                SeqStateScope::All => sys::llama_state_seq_get_data(ctx, dst, size, seq.0),
                _ => sys::llama_state_seq_get_data_ext(ctx, dst, size, seq.0, scope.flags()),
            }
        };
        if n == 0 || n > size {
            return Err(StateError::SaveFailed {
                reason: reason("llama_state_seq_get_data returned 0"),
            });
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Replaces sequence `dest` with a state from [`Context::seq_state_save`] (saved
    /// from any sequence), restored with the scope it was saved with. The last decode's
    /// outputs are forgotten.
    ///
    /// # Errors
    /// [`StateError::InvalidSeqId`]; [`StateError::Invalid`] for bytes that are not a
    /// sequence state (nothing changes then); [`StateError::Rejected`] when llama.cpp
    /// refuses it (sequence `dest` is left empty).
    ///
    /// C equivalent: `llama_state_seq_set_data(ctx, data, len, dest)` for
    /// [`SeqStateScope::All`], `llama_state_seq_set_data_ext(ctx, data, len, dest, flags)`
    /// otherwise.
    pub fn seq_state_load(
        &mut self,
        data: &[u8],
        dest: SeqId,
        scope: SeqStateScope,
    ) -> Result<(), StateError> {
        self.load_seq(data, dest, scope, "sequence state")
    }

    fn load_seq(
        &mut self,
        data: &[u8],
        dest: SeqId,
        scope: SeqStateScope,
        kind: &'static str,
    ) -> Result<(), StateError> {
        self.check_state_seq(dest)?;
        match read_u32(data, 0) {
            None => {
                return Err(invalid(
                    kind,
                    format!("{} bytes, shorter than its tag", data.len()),
                ))
            }
            Some(SEQ_STATE_MAGIC) => {}
            Some(other) => {
                return Err(invalid(
                    kind,
                    format!("tag {other:#010x}, expected {SEQ_STATE_MAGIC:#010x}"),
                ))
            }
        }
        self.check_state_cells(&data[8.min(data.len())..], kind)?;
        self.forget_outputs();
        crate::logging::clear_last_error();
        let (ctx, src, len) = (self.ptr.as_ptr(), data.as_ptr(), data.len());
        // SAFETY: valid context; `dest` is in range (llama.cpp asserts that); host flags
        // only (no ON_DEVICE), so llama.cpp reads at most `data.len()` bytes, throwing
        // past the end, which the call catches.
        let n = unsafe {
            match scope {
                SeqStateScope::All => sys::llama_state_seq_set_data(ctx, src, len, dest.0),
                _ => sys::llama_state_seq_set_data_ext(ctx, src, len, dest.0, scope.flags()),
            }
        };
        if n == 0 {
            return Err(StateError::Rejected {
                reason: reason("llama_state_seq_set_data returned 0"),
            });
        }
        self.check_restored(dest.0..dest.0 + 1, kind)?;
        if n != data.len() {
            return Err(invalid(
                kind,
                format!("{} bytes follow the state", data.len().saturating_sub(n)),
            ));
        }
        Ok(())
    }

    /// Writes the state of `seq` to `path`, with `tokens` recorded before it;
    /// [`Context::seq_state_load_file`] gives them back. Returns the file's size.
    ///
    /// C equivalent: `llama_state_seq_save_file(ctx, path, seq, tokens, n)`.
    pub fn seq_state_save_file(
        &self,
        path: impl AsRef<Path>,
        seq: SeqId,
        tokens: &[Token],
    ) -> Result<u64, StateError> {
        self.check_state_seq(seq)?;
        check_file_tokens(tokens)?;
        let c_path = path_to_cstring(path.as_ref())?;
        crate::logging::clear_last_error();
        // SAFETY: valid context; the id is in range; NUL-terminated path; `tokens`
        // holds `tokens.len()` tokens (a count that fits the file's u32). The call
        // catches llama.cpp's exceptions.
        let n = unsafe {
            sys::llama_state_seq_save_file(
                self.ptr.as_ptr(),
                c_path.as_ptr(),
                seq.0,
                token_ptr(tokens),
                tokens.len(),
            )
        };
        if n == 0 {
            return Err(StateError::SaveFailed {
                reason: reason("llama_state_seq_save_file returned 0"),
            });
        }
        Ok(n as u64)
    }

    /// Replaces sequence `dest` with the state in a file from
    /// [`Context::seq_state_save_file`] and returns the tokens recorded with it. The
    /// last decode's outputs are forgotten.
    ///
    /// The file is read whole and restored through `llama_state_seq_set_data`, not
    /// with `llama_state_seq_load_file`: llama.cpp's file reader takes a short read at
    /// the end of a truncated file for a full one, then aborts the process when it
    /// counts more bytes read than the file holds.
    ///
    /// # Errors
    /// As [`Context::seq_state_load`], plus [`StateError::Io`].
    pub fn seq_state_load_file(
        &mut self,
        path: impl AsRef<Path>,
        dest: SeqId,
    ) -> Result<Vec<Token>, StateError> {
        const KIND: &str = "sequence state file";
        self.check_state_seq(dest)?;
        let (tokens, state) = read_state_file(
            path.as_ref(),
            KIND,
            sys::LLAMA_STATE_SEQ_MAGIC,
            sys::LLAMA_STATE_SEQ_VERSION,
        )?;
        // A file holds the sequence's data alone; in memory it follows a tag and the
        // sequence id it was saved from (which llama.cpp reads and ignores).
        let mut data = Vec::with_capacity(8 + state.len());
        data.extend(SEQ_STATE_MAGIC.to_ne_bytes());
        data.extend(dest.0.to_ne_bytes());
        data.extend(state);
        self.load_seq(&data, dest, SeqStateScope::All, KIND)?;
        Ok(tokens)
    }

    /// Saves the state of `seq` keeping its tensor data in the context's own buffers
    /// (`LLAMA_STATE_SEQ_FLAGS_ON_DEVICE`): no copy to host memory. It supersedes the
    /// previous device state of `seq`; restore it with
    /// [`Context::seq_state_load_on_device`].
    ///
    /// C equivalent: `llama_state_seq_get_data_ext(ctx, buf, len, seq, flags | ON_DEVICE)`.
    pub fn seq_state_save_on_device(
        &mut self,
        seq: SeqId,
        scope: SeqStateScope,
    ) -> Result<DeviceSeqState, StateError> {
        self.check_state_seq(seq)?;
        let flags = scope.flags() | sys::LLAMA_STATE_SEQ_FLAGS_ON_DEVICE;
        // SAFETY: valid context; the id is in range; with ON_DEVICE the size counts the
        // host part only.
        let size = unsafe { sys::llama_state_seq_get_size_ext(self.ptr.as_ptr(), seq.0, flags) };
        let mut bytes = vec![0u8; size];
        crate::logging::clear_last_error();
        // SAFETY: valid context; the id is in range; `bytes` is writable for `size`
        // bytes, the host part's size measured above (llama.cpp throws, and returns 0,
        // past it); the tensor data goes into the context's per-sequence buffers.
        let n = unsafe {
            sys::llama_state_seq_get_data_ext(
                self.ptr.as_ptr(),
                bytes.as_mut_ptr(),
                size,
                seq.0,
                flags,
            )
        };
        if n == 0 || n != size {
            return Err(StateError::SaveFailed {
                reason: reason("llama_state_seq_get_data_ext returned 0"),
            });
        }
        let book = &mut self.device_states;
        book.next += 1;
        book.latest.insert(seq, book.next);
        Ok(DeviceSeqState {
            context: book.context,
            seq,
            generation: book.next,
            scope,
            bytes,
        })
    }

    /// Replaces sequence `dest` with a state from [`Context::seq_state_save_on_device`]
    /// of this context. The last decode's outputs are forgotten.
    ///
    /// # Errors
    /// [`StateError::StaleDeviceState`] for a state of another context, or one a later
    /// save of its sequence superseded (llama.cpp would abort on it);
    /// [`StateError::InvalidSeqId`]; [`StateError::Rejected`] when llama.cpp refuses it.
    ///
    /// C equivalent: `llama_state_seq_set_data_ext(ctx, buf, len, dest, flags | ON_DEVICE)`.
    pub fn seq_state_load_on_device(
        &mut self,
        state: &DeviceSeqState,
        dest: SeqId,
    ) -> Result<(), StateError> {
        self.check_state_seq(dest)?;
        let book = &self.device_states;
        if state.context != book.context || book.latest.get(&state.seq) != Some(&state.generation) {
            return Err(StateError::StaleDeviceState { seq: state.seq });
        }
        self.forget_outputs();
        let flags = state.scope.flags() | sys::LLAMA_STATE_SEQ_FLAGS_ON_DEVICE;
        crate::logging::clear_last_error();
        // SAFETY: valid context; `dest` is in range; the bytes are exactly what this
        // context wrote for `state.seq` with these flags, and its device copy of that
        // sequence is still the one they describe (checked above), which is what
        // llama.cpp's device reader asserts (tag, stored sequence, buffer sizes).
        let n = unsafe {
            sys::llama_state_seq_set_data_ext(
                self.ptr.as_ptr(),
                state.bytes.as_ptr(),
                state.bytes.len(),
                dest.0,
                flags,
            )
        };
        if n == 0 {
            return Err(StateError::Rejected {
                reason: reason("llama_state_seq_set_data_ext returned 0"),
            });
        }
        Ok(())
    }
}
