//! Routes llama.cpp and ggml log lines to the `log` crate (target `llama_cpp`).
//!
//! llama.cpp prints long messages in pieces: a line at some level followed by
//! `GGML_LOG_LEVEL_CONT` pieces. Pieces are buffered per thread and emitted as one
//! record once the line ends, at the level of its first piece.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use llama_cpp_moe_sys as sys;

use crate::ffi::str_from_c;

/// The `log` target every llama.cpp message is emitted under.
pub const LOG_TARGET: &str = "llama_cpp";

static SILENT: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

thread_local! {
    static PENDING: RefCell<(log::Level, String)> = const { RefCell::new((log::Level::Info, String::new())) };
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Stops (or resumes) forwarding llama.cpp's messages to the `log` crate.
///
/// Errors are still remembered for typed errors such as `LoadError::Failed`.
pub fn set_silent(silent: bool) {
    SILENT.store(silent, Ordering::Relaxed);
}

/// Installs the hook; idempotent. [`crate::Backend::init`] calls it.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the callback is a plain `extern "C"` fn that never unwinds and needs no
        // user data; llama_log_set also sets ggml's logger.
        unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
    });
}

/// Clears this thread's remembered llama.cpp error line.
/// Beyond this many bytes of remembered error text, further lines are dropped (a thread
/// that never clears must not grow it forever).
const MAX_ERROR_TEXT: usize = 4096;

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| e.borrow_mut().take());
}

/// The error lines llama.cpp logged on this thread since [`clear_last_error`], joined
/// with "; " (up to about [`MAX_ERROR_TEXT`] bytes).
pub(crate) fn take_last_error() -> Option<String> {
    LAST_ERROR.with(|e| e.borrow_mut().take())
}

fn level_of(level: sys::ggml_log_level) -> Option<log::Level> {
    match level {
        sys::GGML_LOG_LEVEL_ERROR => Some(log::Level::Error),
        sys::GGML_LOG_LEVEL_WARN => Some(log::Level::Warn),
        sys::GGML_LOG_LEVEL_INFO => Some(log::Level::Info),
        sys::GGML_LOG_LEVEL_DEBUG => Some(log::Level::Debug),
        _ => None, // NONE and CONT continue the pending line
    }
}

fn emit(level: log::Level, line: &str) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    if level == log::Level::Error {
        // Keep every error line of the failing call: llama.cpp logs the cause first
        // ("unknown model architecture: ...") and a generic summary last.
        LAST_ERROR.with(|e| match &mut *e.borrow_mut() {
            Some(all) if all.len() < MAX_ERROR_TEXT => {
                all.push_str("; ");
                all.push_str(line);
            }
            Some(_) => {}
            slot @ None => *slot = Some(line.to_owned()),
        });
    }
    if !SILENT.load(Ordering::Relaxed) {
        log::log!(target: LOG_TARGET, level, "{line}");
    }
}

fn handle(level: sys::ggml_log_level, text: &str) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if let Some(new_level) = level_of(level) {
            if !pending.1.is_empty() {
                let line = std::mem::take(&mut pending.1);
                emit(pending.0, &line);
            }
            pending.0 = new_level;
        }
        pending.1.push_str(text);
        if pending.1.ends_with('\n') {
            let lvl = pending.0;
            let line = std::mem::take(&mut pending.1);
            emit(lvl, &line);
        }
    });
}

extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    // SAFETY: ggml passes NULL or a NUL-terminated string valid for the duration of the
    // call, which is as long as `text` is used.
    let Some(text) = (unsafe { str_from_c(text) }) else {
        return;
    };
    // A panic (e.g. from a user's logger) must not unwind into C; the message is dropped.
    let _ = std::panic::catch_unwind(|| handle(level, &text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cont_pieces_join_into_one_line_and_errors_are_remembered() {
        clear_last_error();
        handle(sys::GGML_LOG_LEVEL_ERROR, "failed to load ");
        handle(sys::GGML_LOG_LEVEL_CONT, "model: ");
        handle(sys::GGML_LOG_LEVEL_CONT, "bad magic\n");
        assert_eq!(
            take_last_error().as_deref(),
            Some("failed to load model: bad magic")
        );
        handle(sys::GGML_LOG_LEVEL_INFO, "fine\n");
        assert_eq!(take_last_error(), None);
        handle(sys::GGML_LOG_LEVEL_ERROR, "the cause\n");
        handle(sys::GGML_LOG_LEVEL_INFO, "noise\n");
        handle(sys::GGML_LOG_LEVEL_ERROR, "failed\n");
        handle(sys::GGML_LOG_LEVEL_INFO, "flush\n");
        assert_eq!(take_last_error().as_deref(), Some("the cause; failed"));
    }
}
