//! The GGUF parser: header, metadata and tensor table, in pure Rust.
//!
//! It applies every check ggml's `gguf_init_from_file` applies (so a file it accepts is
//! one llama.cpp's loader can parse) and one more: tensor data must lie inside the file.
//! It reads only the structure (never tensor data) with bounded reads: every length is
//! compared with the bytes left in the file before it is used or sizes an allocation.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::GgufError;
use crate::reader::TensorInfo;
use crate::types::GgmlType;
use crate::value::{code, MetaArray, MetaValue};
use crate::writer::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_TENSOR_NAME};

/// ggml's `GGUF_MAX_STRING_LENGTH` and `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_STRING: u64 = 1 << 30;
const MAX_ARRAY: u64 = 1 << 30;

struct Cursor<'p, R> {
    r: BufReader<R>,
    pos: u64,
    size: u64,
    path: &'p Path,
}

impl<R: Read> Cursor<'_, R> {
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

    /// Reads `n` bytes, after checking that the file has them.
    fn vec(&mut self, n: u64, what: &'static str) -> Result<Vec<u8>, GgufError> {
        if self.size - self.pos < n {
            return Err(self.truncated(what));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += n;
        Ok(b)
    }

    /// Reads the bytes of a length-prefixed string.
    fn string_bytes(&mut self, what: &'static str) -> Result<Vec<u8>, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(self.malformed(at, format!("{what}: string length {len} exceeds 1 GiB")));
        }
        self.vec(len, what)
    }

    /// Reads a length-prefixed string (invalid UTF-8 replaced: GGUF requires UTF-8).
    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        self.string_bytes(what).map(lossy)
    }

    /// Reads a scalar value of GGUF type `ty`; `None` for strings, arrays and unknown codes.
    fn scalar(&mut self, ty: u32) -> Result<Option<MetaValue>, GgufError> {
        const WHAT: &str = "metadata value";
        Ok(Some(match ty {
            code::U8 => MetaValue::U8(u8::from_le_bytes(self.bytes(WHAT)?)),
            code::I8 => MetaValue::I8(i8::from_le_bytes(self.bytes(WHAT)?)),
            code::U16 => MetaValue::U16(u16::from_le_bytes(self.bytes(WHAT)?)),
            code::I16 => MetaValue::I16(i16::from_le_bytes(self.bytes(WHAT)?)),
            code::U32 => MetaValue::U32(u32::from_le_bytes(self.bytes(WHAT)?)),
            code::I32 => MetaValue::I32(i32::from_le_bytes(self.bytes(WHAT)?)),
            code::F32 => MetaValue::F32(f32::from_le_bytes(self.bytes(WHAT)?)),
            code::BOOL => MetaValue::Bool(self.bytes::<1>(WHAT)?[0] != 0),
            code::U64 => MetaValue::U64(u64::from_le_bytes(self.bytes(WHAT)?)),
            code::I64 => MetaValue::I64(i64::from_le_bytes(self.bytes(WHAT)?)),
            code::F64 => MetaValue::F64(f64::from_le_bytes(self.bytes(WHAT)?)),
            _ => return Ok(None),
        }))
    }

    /// Reads `n` packed little-endian scalars of GGUF type `elem` (not a string);
    /// `None` for an unknown code.
    fn scalar_array(&mut self, elem: u32, n: u64) -> Result<Option<MetaArray>, GgufError> {
        let Some(size) = code::fixed_size(elem) else {
            return Ok(None);
        };
        // n <= MAX_ARRAY, so this cannot overflow; vec() checks it against the file.
        let data = self.vec(n * size, "array data")?;
        macro_rules! decode {
            ($t:ty, $variant:ident) => {{
                const N: usize = std::mem::size_of::<$t>();
                MetaArray::$variant(
                    data.chunks_exact(N)
                        .map(|b| {
                            let mut a = [0u8; N];
                            a.copy_from_slice(b);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(Some(match elem {
            code::U8 => MetaArray::U8(data),
            code::I8 => decode!(i8, I8),
            code::U16 => decode!(u16, U16),
            code::I16 => decode!(i16, I16),
            code::U32 => decode!(u32, U32),
            code::I32 => decode!(i32, I32),
            code::F32 => decode!(f32, F32),
            code::BOOL => MetaArray::Bool(data.iter().map(|&b| b != 0).collect()),
            code::U64 => decode!(u64, U64),
            code::I64 => decode!(i64, I64),
            _ => decode!(f64, F64),
        }))
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> GgufError {
    GgufError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`parse`] found: everything of a GGUF file but the tensor data.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
}

/// Parses the GGUF file at `path` (of `size` bytes) read through `file`.
pub(crate) fn parse<R: Read>(path: &Path, file: R, size: u64) -> Result<Parsed, GgufError> {
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
    // Not sized by n_kv: a count that passed the check above can still be far more than
    // the entries the file holds.
    let mut metadata = Vec::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.string("metadata key")?;
        if key.is_empty() {
            return Err(c.malformed(at, "empty metadata key"));
        }
        // ggml looks keys up as C strings (strcmp): with a NUL, "general.alignment\0x"
        // would be general.alignment to llama.cpp and an unknown key to us.
        if key.contains('\0') {
            return Err(c.malformed(at, format!("metadata key {key:?} holds a NUL byte")));
        }
        if !keys.insert(key.clone()) {
            return Err(c.malformed(at, format!("duplicate metadata key {key:?}")));
        }
        let at = c.pos;
        let ty = c.u32("metadata type")?;
        let value = if key == "general.alignment" {
            if ty != code::U32 {
                return Err(c.malformed(at, "general.alignment must be a u32"));
            }
            let a = c.u32("general.alignment")?;
            if !a.is_power_of_two() {
                return Err(c.malformed(at, format!("general.alignment {a} is not a power of two")));
            }
            alignment = a.into();
            MetaValue::U32(a)
        } else if ty == code::ARRAY {
            let at = c.pos;
            let elem = c.u32("array type")?;
            let n = c.u64("array length")?;
            if n > MAX_ARRAY {
                return Err(c.malformed(at, format!("array {key:?} has {n} elements")));
            }
            let array = if elem == code::STRING {
                // Each string takes at least its 8-byte length: bounds the allocation.
                if n.saturating_mul(8) > c.size - c.pos {
                    return Err(c.truncated("string array"));
                }
                let mut strings = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    strings.push(c.string("string array element")?);
                }
                MetaArray::String(strings)
            } else {
                c.scalar_array(elem, n)?.ok_or_else(|| {
                    c.malformed(at, format!("array {key:?} has invalid element type {elem}"))
                })?
            };
            MetaValue::Array(array)
        } else if ty == code::STRING {
            MetaValue::String(c.string("string value")?)
        } else {
            c.scalar(ty)?
                .ok_or_else(|| c.malformed(at, format!("metadata {key:?} has invalid type {ty}")))?
        };
        metadata.push((key, value));
    }

    struct Info {
        name: String,
        ty: GgmlType,
        shape: [u64; 4],
        bytes: u64,
        offset: u64,
        at: u64,
    }
    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let at = c.pos;
        // ggml limits the stored bytes, before any UTF-8 repair.
        let name = c.string_bytes("tensor name")?;
        // ggml names tensors with C strings: "a\0b" and "a\0c" would be one name there.
        if name.contains(&0) {
            return Err(c.malformed(at, "tensor name holds a NUL byte"));
        }
        if name.len() >= MAX_TENSOR_NAME {
            return Err(c.malformed(
                at,
                format!("tensor name of {} bytes is too long", name.len()),
            ));
        }
        let name = lossy(name);
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
        // ggml_new_tensor (ggml.c), which gguf_init_from_file calls for every tensor,
        // multiplies only the dimensions above 1 and asserts the product stays below
        // i64::MAX; gguf.cpp's own check multiplies by a 0 too, so [2^40, 0, 2^40, 1]
        // passes it and then aborts the process (found by fuzzing Model::load).
        let ggml_elements = shape[1..]
            .iter()
            .filter(|&&d| d > 1)
            .try_fold(shape[0], |acc, &d| {
                (i64::MAX as u64 / d > acc).then(|| acc * d)
            });
        if elements.is_none() || ggml_elements.is_none() {
            return Err(c.malformed(
                at_dims,
                format!("tensor {name:?} shape {shape:?} overflows"),
            ));
        }
        let at_ty = c.pos;
        let raw = c.u32("tensor type")?;
        let Some(ty) = GgmlType::from_raw(raw) else {
            return Err(GgufError::UnknownTensorType {
                path: path.to_owned(),
                tensor: name,
                type_id: raw,
                offset: at_ty,
            });
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
            ty,
            shape,
            bytes,
            offset,
            at,
        });
    }

    // ggml pads to the alignment only when there is tensor data to align.
    let data_start = if n_tensors > 0 {
        c.pos.div_ceil(alignment) * alignment
    } else {
        c.pos
    };
    if data_start > size {
        return Err(GgufError::Truncated {
            path: path.to_owned(),
            offset: c.pos,
            what: "alignment padding",
            file_size: size,
        });
    }
    let mut expected = 0u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        if info.offset != expected {
            return Err(GgufError::TensorOffsetMismatch {
                path: path.to_owned(),
                tensor: info.name,
                offset: info.offset,
                expected,
                at: info.at,
            });
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
        // Like ggml_n_dims: trailing 1s dropped, at least one dimension kept.
        let mut shape = info.shape.to_vec();
        while shape.len() > 1 && shape.last() == Some(&1) {
            shape.pop();
        }
        tensors.push(TensorInfo {
            name: info.name,
            ty: info.ty,
            shape,
            n_bytes: info.bytes,
            offset: start,
        });
    }
    Ok(Parsed {
        version,
        alignment,
        data_offset: data_start,
        metadata,
        tensors,
    })
}
