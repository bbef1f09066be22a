//! The FFI plumbing every wrapper needs, in one place: C strings in, paths out, and
//! buffers that grow until a C call's output fits.

use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::path::Path;

use crate::error::PathError;

/// Borrows a C string as text (invalid UTF-8 becomes U+FFFD); `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged
/// for `'a`.
pub(crate) unsafe fn str_from_c<'a>(ptr: *const c_char) -> Option<Cow<'a, str>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL, and the caller guarantees termination and lifetime.
    Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy())
}

/// Copies a C string into a `String` (invalid UTF-8 becomes U+FFFD); NULL gives `""`.
///
/// # Safety
/// As [`str_from_c`], for the duration of the call.
pub(crate) unsafe fn string_from_c(ptr: *const c_char) -> String {
    // SAFETY: forwarded to the caller.
    unsafe { str_from_c(ptr) }.map_or_else(String::new, Cow::into_owned)
}

/// A path as the bytes C's `fopen` expects: the raw OS bytes on Unix, so non-UTF-8
/// names work; UTF-8 elsewhere (llama.cpp and ggml take UTF-8 paths on Windows).
///
/// # Errors
/// [`PathError::NulByte`] when the path has an interior NUL, which C cannot represent;
/// [`PathError::NotUnicode`] off Unix when the path is not valid Unicode.
pub(crate) fn path_to_cstring(path: &Path) -> Result<CString, PathError> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes()
    };
    #[cfg(not(unix))]
    let bytes = path
        .to_str()
        .ok_or_else(|| PathError::NotUnicode(path.to_owned()))?
        .as_bytes();
    CString::new(bytes).map_err(|_| PathError::NulByte(path.to_owned()))
}

/// What a C call that writes into a caller-sized buffer reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// It wrote this many elements, all of the output.
    Wrote(usize),
    /// The buffer was too small: it needs room for this many elements.
    NeedsRoom(usize),
}

impl Fill {
    /// llama.cpp's token and piece convention (`llama_tokenize`, `llama_token_to_piece`,
    /// `llama_detokenize`): a count written, or minus the count needed.
    pub(crate) fn from_count_or_negated_need(n: i32) -> Fill {
        if n >= 0 {
            Fill::Wrote(n as usize)
        } else {
            Fill::NeedsRoom(n.unsigned_abs() as usize)
        }
    }

    /// The `snprintf` convention (`llama_model_desc`, `llama_model_meta_val_str`, ...):
    /// the output's length without its NUL, which needs one more byte of room than
    /// that; `None` for a negative return (no such value).
    pub(crate) fn from_snprintf(n: i32, capacity: usize) -> Option<Fill> {
        let n = usize::try_from(n).ok()?;
        Some(if n < capacity {
            Fill::Wrote(n)
        } else {
            Fill::NeedsRoom(n + 1)
        })
    }

    /// The "total length, written only if it fits" convention, with no NUL
    /// (`llama_chat_apply_template`); `None` for a negative return.
    pub(crate) fn from_total_length(n: i32, capacity: usize) -> Option<Fill> {
        let n = usize::try_from(n).ok()?;
        Some(if n <= capacity {
            Fill::Wrote(n)
        } else {
            Fill::NeedsRoom(n)
        })
    }
}

/// Calls `call` with a buffer of `initial_len` elements and, while it reports that it
/// needs more room, again with a buffer of the size it asked for; returns the
/// elements written.
///
/// The size the call asks for must grow each time: a call that asks for no more than
/// it already got, or says it wrote more than the buffer holds, is inconsistent, and so
/// is one still asking after a few rounds (the functions this serves report the exact
/// size on the first short call). All of these return `Err(inconsistent())` rather than
/// looping forever or reading past the buffer.
///
/// # Errors
/// The first error `call` returns, or `inconsistent()` as described above.
pub(crate) fn fill_growing<T: Clone + Default, E>(
    initial_len: usize,
    mut call: impl FnMut(&mut [T]) -> Result<Fill, E>,
    inconsistent: impl FnOnce() -> E,
) -> Result<Vec<T>, E> {
    const MAX_CALLS: usize = 4;
    let mut buf = vec![T::default(); initial_len];
    for _ in 0..MAX_CALLS {
        match call(&mut buf)? {
            Fill::Wrote(n) if n <= buf.len() => {
                buf.truncate(n);
                return Ok(buf);
            }
            Fill::NeedsRoom(n) if n > buf.len() => buf.resize(n, T::default()),
            Fill::Wrote(_) | Fill::NeedsRoom(_) => break,
        }
    }
    Err(inconsistent())
}

/// The length of `buf` as the `int32_t` capacity most llama.cpp calls take, or
/// `too_long(len)` when it does not fit.
pub(crate) fn c_int_len<T, E>(buf: &[T], too_long: impl FnOnce(usize) -> E) -> Result<i32, E> {
    i32::try_from(buf.len()).map_err(|_| too_long(buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for an `snprintf`-style C getter: writes as much of `text` as fits
    /// (with a NUL) and returns the full length.
    fn snprintf_like(text: &str, buf: &mut [u8]) -> i32 {
        if !buf.is_empty() {
            let n = text.len().min(buf.len() - 1);
            buf[..n].copy_from_slice(&text.as_bytes()[..n]);
            buf[n] = 0;
        }
        text.len() as i32
    }

    #[test]
    fn buffer_grows_to_the_size_the_call_reports() {
        let text = "x".repeat(1000);
        let mut sizes = Vec::new();
        let out = fill_growing(
            16,
            |buf: &mut [u8]| {
                sizes.push(buf.len());
                let n = snprintf_like(&text, buf);
                Ok::<_, &str>(Fill::from_snprintf(n, buf.len()).expect("non-negative"))
            },
            || "inconsistent",
        )
        .unwrap();
        assert_eq!(out, text.as_bytes());
        // One short call that reports the size, one that fits (NUL included).
        assert_eq!(sizes, [16, 1001]);
    }

    #[test]
    fn output_that_fits_needs_one_call() {
        let mut calls = 0;
        let out = fill_growing(
            8,
            |buf: &mut [i32]| {
                calls += 1;
                buf[..3].copy_from_slice(&[7, 8, 9]);
                Ok::<_, ()>(Fill::from_count_or_negated_need(3))
            },
            || (),
        )
        .unwrap();
        assert_eq!((out, calls), (vec![7, 8, 9], 1));
    }

    #[test]
    fn negated_need_and_total_length_conventions() {
        assert_eq!(Fill::from_count_or_negated_need(-40), Fill::NeedsRoom(40));
        assert_eq!(Fill::from_count_or_negated_need(0), Fill::Wrote(0));
        assert_eq!(Fill::from_total_length(10, 10), Some(Fill::Wrote(10)));
        assert_eq!(Fill::from_total_length(11, 10), Some(Fill::NeedsRoom(11)));
        assert_eq!(Fill::from_total_length(-1, 10), None);
        assert_eq!(Fill::from_snprintf(10, 10), Some(Fill::NeedsRoom(11)));
        assert_eq!(Fill::from_snprintf(9, 10), Some(Fill::Wrote(9)));
        assert_eq!(Fill::from_snprintf(-1, 10), None);
    }

    #[test]
    fn errors_from_the_call_stop_the_retry() {
        let mut calls = 0;
        let out = fill_growing(
            4,
            |_: &mut [u8]| {
                calls += 1;
                Err::<Fill, _>("C said no")
            },
            || "inconsistent",
        );
        assert_eq!((out, calls), (Err("C said no"), 1));
    }

    #[test]
    fn inconsistent_reports_end_in_an_error_not_a_loop() {
        // Asks for no more than it has: retrying would never end.
        let same = fill_growing(
            4,
            |_: &mut [u8]| Ok::<_, &str>(Fill::NeedsRoom(4)),
            || "bad",
        );
        assert_eq!(same, Err("bad"));
        // Claims to have written past the buffer.
        let over = fill_growing(4, |_: &mut [u8]| Ok::<_, &str>(Fill::Wrote(5)), || "bad");
        assert_eq!(over, Err("bad"));
        // Keeps asking for more.
        let mut calls = 0;
        let endless = fill_growing(
            1,
            |buf: &mut [u8]| {
                calls += 1;
                Ok::<_, &str>(Fill::NeedsRoom(buf.len() * 2))
            },
            || "bad",
        );
        assert_eq!((endless, calls), (Err("bad"), 4));
    }

    #[test]
    fn c_strings_are_read_lossily_and_null_is_none() {
        let text = c"h\xc3\xa9llo \xff";
        // SAFETY: a NUL-terminated literal that lives for the whole program.
        let s = unsafe { str_from_c(text.as_ptr()) }.unwrap();
        assert_eq!(s, "héllo \u{FFFD}");
        // SAFETY: NULL is allowed.
        assert!(unsafe { str_from_c(std::ptr::null()) }.is_none());
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { string_from_c(std::ptr::null()) }, "");
    }

    #[test]
    fn paths_with_an_interior_nul_are_a_typed_error() {
        let bad = Path::new("models/a\0b.gguf");
        assert_eq!(
            path_to_cstring(bad),
            Err(PathError::NulByte(bad.to_owned()))
        );
        let good = Path::new("models/ünïcode.gguf");
        assert_eq!(
            path_to_cstring(good).unwrap().as_bytes(),
            "models/ünïcode.gguf".as_bytes()
        );
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_keep_their_bytes_on_unix() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let raw = b"models/\xffname.gguf";
        let path = Path::new(OsStr::from_bytes(raw));
        assert_eq!(path_to_cstring(path).unwrap().as_bytes(), raw);
    }

    #[test]
    fn c_int_len_rejects_what_c_cannot_count() {
        assert_eq!(c_int_len(&[0u8; 3], |n| n), Ok(3));
        // A zero-sized element type makes a huge slice free to allocate.
        let huge = vec![(); i32::MAX as usize + 1];
        assert_eq!(c_int_len(&huge, |n| n), Err(i32::MAX as usize + 1));
    }
}
