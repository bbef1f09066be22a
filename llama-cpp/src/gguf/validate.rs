//! A Rust pass over the GGUF header, metadata and tensor table before ggml sees them.
//!
//! ggml's `gguf_init_from_file` is defensive, but it does not check tensor data against
//! the file size, and any check it lacks in some version would become an abort in our
//! process. This pass reads only the structure (never tensor data) with bounded reads:
//! every length is compared with the bytes left in the file before it is used.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::code;
use super::writer::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_TENSOR_NAME};

/// ggml's `GGUF_MAX_STRING_LENGTH` and `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_STRING: u64 = 1 << 30;
const MAX_ARRAY: u64 = 1 << 30;

struct Cursor<'p> {
    r: BufReader<File>,
    pos: u64,
    size: u64,
    path: &'p Path,
}

impl Cursor<'_> {
    fn truncated(&self, what: &'static str) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_owned(),
            offset: self.pos,
            what,
            file_size: self.size,
        }
    }

    fn malformed(&self, at: u64, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_owned(),
            offset: at,
            what: what.into(),
        }
    }

    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        if self.size - self.pos < N as u64 {
            return Err(self.truncated(what));
        }
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), GgufError> {
        if self.size - self.pos < n {
            return Err(self.truncated(what));
        }
        // n <= file size <= i64::MAX for any real file.
        self.r
            .seek_relative(n as i64)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += n;
        Ok(())
    }

    /// Reads a string's length and checks it; returns the bytes only when `keep`.
    fn string(&mut self, what: &'static str, keep: bool) -> Result<Option<Vec<u8>>, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(self.malformed(at, format!("{what}: string length {len} exceeds 1 GiB")));
        }
        if self.size - self.pos < len {
            return Err(self.truncated(what));
        }
        if !keep {
            self.skip(len, what)?;
            return Ok(None);
        }
        let mut b = vec![0u8; len as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += len;
        Ok(Some(b))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> GgufError {
    GgufError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checks the structure of the GGUF file at `path` (of `size` bytes).
pub(crate) fn validate(path: &Path, file: File, size: u64) -> Result<(), GgufError> {
    let mut c = Cursor {
        r: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        size,
        path,
    };

    let n = size.min(4) as usize;
    let mut magic = [0u8; 4];
    c.r.read_exact(&mut magic[..n])
        .map_err(|e| io_err(path, e))?;
    c.pos = n as u64;
    if magic[..n] != GGUF_MAGIC[..n] {
        return Err(GgufError::NotGguf {
            path: path.to_owned(),
            magic: magic[..n].to_vec(),
        });
    }
    if n < 4 {
        return Err(c.truncated("magic"));
    }

    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let at = c.pos;
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // Each entry takes at least a few bytes, so counts beyond the file size are corrupt
    // (and must not size any allocation).
    if n_tensors > size / 8 || n_kv > size / 8 {
        return Err(c.malformed(
            at,
            format!("{n_tensors} tensors / {n_kv} metadata entries cannot fit in {size} bytes"),
        ));
    }

    let mut alignment = u64::from(DEFAULT_ALIGNMENT);
    let mut keys = HashSet::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.string("metadata key", true)?.unwrap_or_default();
        if key.is_empty() {
            return Err(c.malformed(at, "empty metadata key"));
        }
        let key = String::from_utf8_lossy(&key).into_owned();
        if !keys.insert(key.clone()) {
            return Err(c.malformed(at, format!("duplicate metadata key {key:?}")));
        }
        let at = c.pos;
        let ty = c.u32("metadata type")?;
        if key == "general.alignment" {
            if ty != code::U32 {
                return Err(c.malformed(at, "general.alignment must be a u32"));
            }
            let a = c.u32("general.alignment")?;
            if !a.is_power_of_two() {
                return Err(c.malformed(at, format!("general.alignment {a} is not a power of two")));
            }
            alignment = a.into();
            continue;
        }
        if ty == code::ARRAY {
            let at = c.pos;
            let elem = c.u32("array type")?;
            let n = c.u64("array length")?;
            if n > MAX_ARRAY {
                return Err(c.malformed(at, format!("array {key:?} has {n} elements")));
            }
            if elem == code::STRING {
                if n.saturating_mul(8) > c.size - c.pos {
                    return Err(c.truncated("string array"));
                }
                for _ in 0..n {
                    c.string("string array element", false)?;
                }
            } else if let Some(sz) = code::fixed_size(elem) {
                c.skip(n * sz, "array data")?;
            } else {
                return Err(
                    c.malformed(at, format!("array {key:?} has invalid element type {elem}"))
                );
            }
        } else if ty == code::STRING {
            c.string("string value", false)?;
        } else if let Some(sz) = code::fixed_size(ty) {
            c.skip(sz, "metadata value")?;
        } else {
            return Err(c.malformed(at, format!("metadata {key:?} has invalid type {ty}")));
        }
    }

    struct Info {
        name: String,
        bytes: u64,
        offset: u64,
        at: u64,
    }
    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.string("tensor name", true)?.unwrap_or_default();
        let name = String::from_utf8_lossy(&name).into_owned();
        if name.len() >= MAX_TENSOR_NAME {
            return Err(c.malformed(
                at,
                format!("tensor name of {} bytes is too long", name.len()),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(c.malformed(at, format!("duplicate tensor name {name:?}")));
        }
        let at_dims = c.pos;
        let n_dims = c.u32("tensor dimensions")?;
        if n_dims > 4 {
            return Err(c.malformed(at_dims, format!("tensor {name:?} has {n_dims} dimensions")));
        }
        let mut shape = [1u64; 4];
        for d in shape.iter_mut().take(n_dims as usize) {
            let v = c.u64("tensor shape")?;
            if v > i64::MAX as u64 {
                return Err(
                    c.malformed(at_dims, format!("tensor {name:?} has a negative dimension"))
                );
            }
            *d = v;
        }
        let elements = shape.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        });
        if elements.is_none() {
            return Err(c.malformed(
                at_dims,
                format!("tensor {name:?} shape {shape:?} overflows"),
            ));
        }
        let at_ty = c.pos;
        let raw = c.u32("tensor type")?;
        let Some(ty) = GgmlType::from_raw(raw) else {
            return Err(c.malformed(
                at_ty,
                format!("tensor {name:?} has unknown ggml type {raw}"),
            ));
        };
        let Some(bytes) = ty.tensor_bytes(&shape) else {
            return Err(c.malformed(
                at_ty,
                format!("tensor {name:?} shape {shape:?} does not fit type {ty}"),
            ));
        };
        let offset = c.u64("tensor offset")?;
        infos.push(Info {
            name,
            bytes,
            offset,
            at,
        });
    }

    let data_start = c.pos.div_ceil(alignment) * alignment;
    if n_tensors > 0 && data_start > size {
        return Err(GgufError::Truncated {
            path: path.to_owned(),
            offset: c.pos,
            what: "alignment padding",
            file_size: size,
        });
    }
    let mut expected = 0u64;
    for info in infos {
        if info.offset != expected {
            let what = format!(
                "tensor {:?} at data offset {}, expected {expected}",
                info.name, info.offset
            );
            return Err(c.malformed(info.at, what));
        }
        let start = data_start.saturating_add(info.offset);
        let end = start.saturating_add(info.bytes);
        if end > size {
            return Err(GgufError::TensorDataOutOfBounds {
                path: path.to_owned(),
                name: info.name,
                start,
                end,
                file_size: size,
            });
        }
        expected =
            expected.saturating_add(info.bytes.div_ceil(alignment).saturating_mul(alignment));
    }
    Ok(())
}
