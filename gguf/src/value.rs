//! GGUF metadata values, shared by the reader and the writer.

/// GGUF value type codes (`enum gguf_type`), fixed by the file format.
pub(crate) mod code {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    /// Size in bytes of one scalar of this type; `None` for strings, arrays, unknown codes.
    pub fn fixed_size(code: u32) -> Option<u64> {
        match code {
            U8 | I8 | BOOL => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            _ => None,
        }
    }
}

/// The type code of `value`, a [`MetaValue`] or a [`MetaArray`]: their scalar variants
/// have the same names; `extra` arms cover the rest.
macro_rules! scalar_code {
    ($value:expr $(, $extra:pat => $code:expr)*) => {
        match $value {
            Self::U8(_) => code::U8,
            Self::I8(_) => code::I8,
            Self::U16(_) => code::U16,
            Self::I16(_) => code::I16,
            Self::U32(_) => code::U32,
            Self::I32(_) => code::I32,
            Self::F32(_) => code::F32,
            Self::Bool(_) => code::BOOL,
            Self::String(_) => code::STRING,
            Self::U64(_) => code::U64,
            Self::I64(_) => code::I64,
            Self::F64(_) => code::F64,
            $($extra => $code,)*
        }
    };
}

/// One metadata value of a GGUF key/value pair.
///
/// Strings are decoded as UTF-8, invalid sequences replaced (GGUF requires UTF-8).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MetaValue {
    /// `GGUF_TYPE_UINT8`
    U8(u8),
    /// `GGUF_TYPE_INT8`
    I8(i8),
    /// `GGUF_TYPE_UINT16`
    U16(u16),
    /// `GGUF_TYPE_INT16`
    I16(i16),
    /// `GGUF_TYPE_UINT32`
    U32(u32),
    /// `GGUF_TYPE_INT32`
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`
    F32(f32),
    /// `GGUF_TYPE_BOOL`
    Bool(bool),
    /// `GGUF_TYPE_STRING`
    String(String),
    /// `GGUF_TYPE_UINT64`
    U64(u64),
    /// `GGUF_TYPE_INT64`
    I64(i64),
    /// `GGUF_TYPE_FLOAT64`
    F64(f64),
    /// `GGUF_TYPE_ARRAY` (ggml does not accept nested arrays).
    Array(MetaArray),
}

/// A homogeneous GGUF array value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MetaArray {
    /// Array of `u8`.
    U8(Vec<u8>),
    /// Array of `i8`.
    I8(Vec<i8>),
    /// Array of `u16`.
    U16(Vec<u16>),
    /// Array of `i16`.
    I16(Vec<i16>),
    /// Array of `u32`.
    U32(Vec<u32>),
    /// Array of `i32`.
    I32(Vec<i32>),
    /// Array of `f32`.
    F32(Vec<f32>),
    /// Array of `bool`.
    Bool(Vec<bool>),
    /// Array of strings.
    String(Vec<String>),
    /// Array of `u64`.
    U64(Vec<u64>),
    /// Array of `i64`.
    I64(Vec<i64>),
    /// Array of `f64`.
    F64(Vec<f64>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type code of the elements.
    pub(crate) fn elem_code(&self) -> u32 {
        scalar_code!(self)
    }
}

impl MetaValue {
    /// The value's type code.
    pub(crate) fn code(&self) -> u32 {
        scalar_code!(self, Self::Array(_) => code::ARRAY)
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float of either width.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        Self::U32(v)
    }
}
impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        Self::F32(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for MetaValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<MetaArray> for MetaValue {
    fn from(v: MetaArray) -> Self {
        Self::Array(v)
    }
}
