//! A streaming GGUF v3 writer.
//!
//! The header, metadata and tensor table are written first; tensor data is then pulled
//! from a caller-supplied closure one tensor at a time, so a 60 GB file never needs more
//! memory than the closure itself uses.

use std::collections::HashSet;
use std::io::{self, Write};

use super::types::GgmlType;
use super::value::{MetaArray, MetaValue};

/// The GGUF magic, `"GGUF"` as bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The GGUF version this writer produces.
pub const GGUF_VERSION: u32 = 3;
/// The data alignment ggml uses when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this.
pub const MAX_TENSOR_NAME: usize = 64;

/// A tensor to be written: name, type and ggml shape (`shape[0]` is the fastest dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// Tensor name, e.g. `blk.0.ffn_up_exps.weight`.
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// ggml shape, 1 to 4 dimensions, `shape[0]` fastest.
    pub shape: Vec<u64>,
}

impl TensorDesc {
    /// Bytes of tensor data (without alignment padding).
    pub fn nbytes(&self) -> u64 {
        self.ty.tensor_bytes(&self.shape).unwrap_or(0)
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Why a GGUF file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The output failed.
    #[error("GGUF write failed")]
    Io(#[from] io::Error),
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// Two metadata entries share a key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A tensor name is empty or too long for ggml.
    #[error("tensor name {0:?} is empty or not shorter than {MAX_TENSOR_NAME} bytes")]
    BadTensorName(String),
    /// A tensor's shape does not fit its type (row not a multiple of the block size,
    /// no or more than 4 dimensions, or a size that overflows).
    #[error("tensor {name:?}: shape {shape:?} does not fit type {ty}")]
    BadShape {
        /// Tensor name.
        name: String,
        /// Requested shape.
        shape: Vec<u64>,
        /// Requested type.
        ty: GgmlType,
    },
    /// The data closure wrote a different number of bytes than the tensor needs.
    #[error("tensor {name:?}: data closure wrote {written} bytes, expected {expected}")]
    WrongDataSize {
        /// Tensor name.
        name: String,
        /// Bytes written.
        written: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// `alignment` is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u32),
}

/// Builds a GGUF v3 file: metadata and a tensor table, then streams the data.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    kv: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<TensorDesc>,
    names: HashSet<String>,
    alignment: u32,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment (32), recorded as `general.alignment`.
    pub fn new() -> Self {
        let mut w = Self {
            kv: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
        };
        w.kv.push((
            "general.alignment".into(),
            MetaValue::U32(DEFAULT_ALIGNMENT),
        ));
        w.keys.insert("general.alignment".into());
        w
    }

    /// Sets the data alignment (a power of two) and its `general.alignment` entry.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), WriteError> {
        if !alignment.is_power_of_two() {
            return Err(WriteError::BadAlignment(alignment));
        }
        self.alignment = alignment;
        for (k, v) in &mut self.kv {
            if k == "general.alignment" {
                *v = MetaValue::U32(alignment);
            }
        }
        Ok(())
    }

    /// Adds a metadata entry; keys must be unique.
    pub fn add_kv(
        &mut self,
        key: impl Into<String>,
        value: impl Into<MetaValue>,
    ) -> Result<(), WriteError> {
        let key = key.into();
        if !self.keys.insert(key.clone()) {
            return Err(WriteError::DuplicateKey(key));
        }
        self.kv.push((key, value.into()));
        Ok(())
    }

    /// Adds a tensor to the table; its data is supplied later by [`GgufWriter::write`].
    pub fn add_tensor(&mut self, desc: TensorDesc) -> Result<(), WriteError> {
        if desc.name.is_empty() || desc.name.len() >= MAX_TENSOR_NAME {
            return Err(WriteError::BadTensorName(desc.name));
        }
        let bad_dims = desc.shape.is_empty()
            || desc.shape.len() > 4
            || desc.shape.iter().any(|&d| d > i64::MAX as u64);
        if bad_dims || desc.ty.tensor_bytes(&desc.shape).is_none() {
            return Err(WriteError::BadShape {
                name: desc.name,
                shape: desc.shape,
                ty: desc.ty,
            });
        }
        if !self.names.insert(desc.name.clone()) {
            return Err(WriteError::DuplicateTensor(desc.name));
        }
        self.tensors.push(desc);
        Ok(())
    }

    /// The metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.kv
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorDesc] {
        &self.tensors
    }

    fn header_len(&self) -> u64 {
        let mut c = CountingWriter {
            inner: io::sink(),
            count: 0,
        };
        // Writing into a sink cannot fail.
        let _ = self.write_header(&mut c);
        c.count
    }

    fn padded(&self, n: u64) -> u64 {
        let a = u64::from(self.alignment);
        n.div_ceil(a) * a
    }

    /// The exact size of the file [`GgufWriter::write`] will produce.
    pub fn file_size(&self) -> u64 {
        let data: u64 = self.tensors.iter().map(|t| self.padded(t.nbytes())).sum();
        self.padded(self.header_len()) + data
    }

    fn write_header<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&GGUF_MAGIC)?;
        w.write_all(&GGUF_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            write_str(w, k)?;
            w.write_all(&v.code().to_le_bytes())?;
            write_value(w, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(w, &t.name)?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in &t.shape {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.raw().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += self.padded(t.nbytes());
        }
        Ok(())
    }

    /// Writes only the header, metadata and tensor table, padded up to where the tensor
    /// data starts; returns the bytes written. With [`std::fs::File::set_len`] to
    /// [`GgufWriter::file_size`] afterwards this gives a complete file whose data region
    /// is a hole (reads as zeros, occupies no disk blocks on file systems with sparse
    /// files): enough for anything that reads only the table, such as llama.cpp's
    /// `no_alloc` dry runs.
    pub fn write_table<W: Write>(&self, out: W) -> Result<u64, WriteError> {
        let mut w = CountingWriter {
            inner: out,
            count: 0,
        };
        self.write_header(&mut w)?;
        let target = self.padded(w.count);
        pad_to(&mut w, target)?;
        w.flush()?;
        Ok(w.count)
    }

    /// Writes the whole file to `out`. `data(index, desc, sink)` must write exactly
    /// `desc.nbytes()` bytes of tensor data for each tensor, in table order; padding is
    /// added here. Returns the number of bytes written.
    pub fn write<W, F>(&self, out: W, mut data: F) -> Result<u64, WriteError>
    where
        W: Write,
        F: FnMut(usize, &TensorDesc, &mut dyn Write) -> io::Result<()>,
    {
        let mut w = CountingWriter {
            inner: out,
            count: 0,
        };
        self.write_header(&mut w)?;
        let target = self.padded(w.count);
        pad_to(&mut w, target)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let start = w.count;
            data(i, t, &mut w)?;
            let written = w.count - start;
            if written != t.nbytes() {
                return Err(WriteError::WrongDataSize {
                    name: t.name.clone(),
                    written,
                    expected: t.nbytes(),
                });
            }
            let target = self.padded(w.count);
            pad_to(&mut w, target)?;
        }
        w.flush()?;
        Ok(w.count)
    }
}

fn pad_to<W: Write>(w: &mut CountingWriter<W>, target: u64) -> io::Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    while w.count < target {
        let n = (target - w.count).min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..n])?;
    }
    Ok(())
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, v: &MetaValue) -> io::Result<()> {
    match v {
        MetaValue::U8(x) => w.write_all(&[*x]),
        MetaValue::I8(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::Bool(x) => w.write_all(&[u8::from(*x)]),
        MetaValue::String(s) => write_str(w, s),
        MetaValue::U64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::Array(a) => {
            w.write_all(&a.elem_code().to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            write_array(w, a)
        }
    }
}

fn write_array<W: Write>(w: &mut W, a: &MetaArray) -> io::Result<()> {
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        MetaArray::U8(v) => w.write_all(v),
        MetaArray::I8(v) => each!(v),
        MetaArray::U16(v) => each!(v),
        MetaArray::I16(v) => each!(v),
        MetaArray::U32(v) => each!(v),
        MetaArray::I32(v) => each!(v),
        MetaArray::F32(v) => each!(v),
        MetaArray::Bool(v) => {
            for &b in v {
                w.write_all(&[u8::from(b)])?;
            }
            Ok(())
        }
        MetaArray::String(v) => {
            for s in v {
                write_str(w, s)?;
            }
            Ok(())
        }
        MetaArray::U64(v) => each!(v),
        MetaArray::I64(v) => each!(v),
        MetaArray::F64(v) => each!(v),
    }
}

/// Counts bytes so the writer knows offsets and padding without seeking.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_sized_exactly() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama").unwrap();
        w.add_tensor(TensorDesc {
            name: "a".into(),
            ty: GgmlType::F32,
            shape: vec![3],
        })
        .unwrap();
        w.add_tensor(TensorDesc {
            name: "b".into(),
            ty: GgmlType::Q8_0,
            shape: vec![32, 2],
        })
        .unwrap();
        let mut buf = Vec::new();
        let n = w
            .write(&mut buf, |_, t, out| {
                out.write_all(&vec![7u8; t.nbytes() as usize])
            })
            .unwrap();
        assert_eq!(n, buf.len() as u64);
        assert_eq!(n, w.file_size());
        assert_eq!(&buf[..4], b"GGUF");
        assert_eq!(buf.len() % 32, 0);
    }

    #[test]
    fn rejects_bad_tables() {
        let mut w = GgufWriter::new();
        let t = |name: &str, ty, shape: Vec<u64>| TensorDesc {
            name: name.into(),
            ty,
            shape,
        };
        assert!(matches!(
            w.add_tensor(t("x", GgmlType::Q8_0, vec![33])),
            Err(WriteError::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor(t("", GgmlType::F32, vec![1])),
            Err(WriteError::BadTensorName(_))
        ));
        w.add_tensor(t("x", GgmlType::F32, vec![1])).unwrap();
        assert!(matches!(
            w.add_tensor(t("x", GgmlType::F32, vec![1])),
            Err(WriteError::DuplicateTensor(_))
        ));
        assert!(matches!(
            w.add_kv("general.alignment", 8u32),
            Err(WriteError::DuplicateKey(_))
        ));
        assert!(matches!(
            w.set_alignment(48),
            Err(WriteError::BadAlignment(48))
        ));
        let short = w.write(Vec::new(), |_, _, _| Ok(()));
        assert!(matches!(short, Err(WriteError::WrongDataSize { .. })));
    }
}
