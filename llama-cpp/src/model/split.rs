//! The file names of split GGUF models (`name-00001-of-00003.gguf`), as llama.cpp's
//! loader and `llama-gguf-split` spell them.

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

use llama_cpp_moe_sys as sys;

use crate::ffi::path_to_cstring;
use crate::PathError;

/// Why a split file name could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitPathError {
    /// The split number is not below the split count, or the count is 0 or above
    /// llama.cpp's five-digit numbering.
    #[error("split {split_no} of {split_count} does not exist (splits are numbered from 0, fewer than 100000)")]
    OutOfRange {
        /// The 0-based split number asked for.
        split_no: u32,
        /// The number of splits asked for.
        split_count: u32,
    },
    /// The prefix or path cannot be passed to C.
    #[error(transparent)]
    Path(#[from] PathError),
}

fn check_range(split_no: u32, split_count: u32) -> Result<(i32, i32), SplitPathError> {
    if split_count == 0 || split_count > 99_999 || split_no >= split_count {
        return Err(SplitPathError::OutOfRange {
            split_no,
            split_count,
        });
    }
    // Both are below 100000 here, so they fit an i32.
    Ok((split_no as i32, split_count as i32))
}

fn path_from_c(buf: &[u8]) -> PathBuf {
    let text = CStr::from_bytes_until_nul(buf).expect("llama.cpp NUL-terminates what it writes");
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(text.to_bytes()))
    }
    #[cfg(not(unix))]
    PathBuf::from(text.to_string_lossy().into_owned())
}

/// The path of split `split_no` (0-based) of `split_count`:
/// `{prefix}-{split_no + 1:05}-of-{split_count:05}.gguf`.
/// C equivalent: `llama_split_path`.
///
/// ```
/// use std::path::Path;
/// let path = llama_cpp_moe::model::split_path(Path::new("models/big"), 0, 3).unwrap();
/// assert_eq!(path, Path::new("models/big-00001-of-00003.gguf"));
/// ```
///
/// # Errors
/// [`SplitPathError::OutOfRange`] unless `split_no < split_count <= 99999`;
/// [`SplitPathError::Path`] for a prefix C cannot take.
pub fn split_path(
    prefix: impl AsRef<Path>,
    split_no: u32,
    split_count: u32,
) -> Result<PathBuf, SplitPathError> {
    let (no, count) = check_range(split_no, split_count)?;
    let c_prefix = path_to_cstring(prefix.as_ref())?;
    // The suffix is "-NNNNN-of-NNNNN.gguf" (20 bytes) plus the NUL.
    let mut buf = vec![0u8; c_prefix.as_bytes().len() + 32];
    // SAFETY: buf has buf.len() writable bytes; c_prefix is NUL-terminated and outlives
    // the call; snprintf writes at most maxlen bytes, NUL included.
    let written = unsafe {
        sys::llama_split_path(
            buf.as_mut_ptr().cast::<c_char>(),
            buf.len(),
            c_prefix.as_ptr(),
            no,
            count,
        )
    };
    debug_assert!(written > 0, "the buffer has room for the suffix");
    Ok(path_from_c(&buf))
}

/// The prefix of a split file's path, if `path` is split `split_no` (0-based) of
/// `split_count` (its name ends in `-{split_no + 1:05}-of-{split_count:05}.gguf`);
/// `None` when it is not. C equivalent: `llama_split_prefix`.
///
/// # Errors
/// As [`split_path`].
pub fn split_prefix(
    path: impl AsRef<Path>,
    split_no: u32,
    split_count: u32,
) -> Result<Option<PathBuf>, SplitPathError> {
    let (no, count) = check_range(split_no, split_count)?;
    let c_path = path_to_cstring(path.as_ref())?;
    let mut buf = vec![0u8; c_path.as_bytes().len() + 1];
    // SAFETY: buf has buf.len() writable bytes, room for any prefix of the path and its
    // NUL; c_path is NUL-terminated and outlives the call.
    let written = unsafe {
        sys::llama_split_prefix(
            buf.as_mut_ptr().cast::<c_char>(),
            buf.len(),
            c_path.as_ptr(),
            no,
            count,
        )
    };
    Ok((written > 0).then(|| path_from_c(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_numbered_from_one_with_five_digits() {
        assert_eq!(
            split_path("dir/model", 2, 12).unwrap(),
            Path::new("dir/model-00003-of-00012.gguf")
        );
        assert_eq!(
            split_path("m", 99_998, 99_999).unwrap(),
            Path::new("m-99999-of-99999.gguf")
        );
    }

    #[test]
    fn the_prefix_comes_back_only_for_the_matching_split() {
        let path = split_path("/tmp/x/qwen3-moe", 1, 3).unwrap();
        assert_eq!(
            split_prefix(&path, 1, 3).unwrap(),
            Some(PathBuf::from("/tmp/x/qwen3-moe"))
        );
        assert_eq!(split_prefix(&path, 0, 3).unwrap(), None);
        assert_eq!(split_prefix(&path, 1, 4).unwrap(), None);
        assert_eq!(split_prefix("model.gguf", 0, 1).unwrap(), None);
    }

    #[test]
    fn out_of_range_numbers_and_nul_bytes_are_errors() {
        for (no, count) in [(0, 0), (3, 3), (5, 2), (0, 100_000)] {
            assert!(
                matches!(
                    split_path("m", no, count),
                    Err(SplitPathError::OutOfRange { split_no, split_count })
                        if split_no == no && split_count == count
                ),
                "{no} of {count}"
            );
            assert!(matches!(
                split_prefix("m-00001-of-00001.gguf", no, count),
                Err(SplitPathError::OutOfRange { .. })
            ));
        }
        assert!(matches!(
            split_path("a\0b", 0, 1),
            Err(SplitPathError::Path(PathError::NulByte(_)))
        ));
    }
}
