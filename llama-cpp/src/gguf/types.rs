//! ggml tensor types as they appear in GGUF files.

use std::ffi::CStr;
use std::fmt;

use llama_cpp_moe_sys as sys;

/// A ggml tensor type (`enum ggml_type`), as stored in a GGUF tensor table.
///
/// A newtype rather than an enum: GGUF files may carry any type ggml knows, and the
/// reader must be able to report types this crate has no special handling for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self(sys::GGML_TYPE_F32);
    /// 16-bit IEEE float.
    pub const F16: Self = Self(sys::GGML_TYPE_F16);
    /// bfloat16.
    pub const BF16: Self = Self(sys::GGML_TYPE_BF16);
    /// 4-bit blocks of 32 with one f16 scale.
    pub const Q4_0: Self = Self(sys::GGML_TYPE_Q4_0);
    /// 8-bit blocks of 32 with one f16 scale.
    pub const Q8_0: Self = Self(sys::GGML_TYPE_Q8_0);
    /// OCP microscaling FP4: E2M1 values in blocks of 32 with an E8M0 scale (gpt-oss experts).
    pub const MXFP4: Self = Self(sys::GGML_TYPE_MXFP4);

    /// The type with this raw `ggml_type` value, if ggml can store it in a GGUF file
    /// (in range and not one of the removed types whose block size is 0).
    pub fn from_raw(raw: u32) -> Option<Self> {
        if raw >= sys::GGML_TYPE_COUNT {
            return None;
        }
        // SAFETY: raw is a valid index into ggml's type-traits table (checked above).
        let blck = unsafe { sys::ggml_blck_size(raw) };
        (blck > 0).then_some(Self(raw))
    }

    /// The raw `ggml_type` value.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// ggml's name for the type (`"q8_0"`, `"f16"`, ...).
    pub fn name(self) -> &'static str {
        // SAFETY: every GgmlType holds an in-range value (constructors check); ggml
        // returns a pointer to a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(sys::ggml_type_name(self.0)) };
        name.to_str().unwrap_or("?")
    }

    /// Elements per quantisation block (1 for plain float types).
    pub fn block_size(self) -> u64 {
        // SAFETY: in-range value, see `name`.
        let b = unsafe { sys::ggml_blck_size(self.0) };
        b.max(1) as u64
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        // SAFETY: in-range value, see `name`.
        unsafe { sys::ggml_type_size(self.0) as u64 }
    }

    /// Whether the type is a block-quantised one.
    pub fn is_quantized(self) -> bool {
        // SAFETY: in-range value, see `name`.
        unsafe { sys::ggml_is_quantized(self.0) }
    }

    /// Bytes taken by a tensor of this type and shape (`shape[0]` is the fastest dimension),
    /// or `None` if `shape[0]` is not a multiple of the block size or the size overflows.
    pub fn tensor_bytes(self, shape: &[u64]) -> Option<u64> {
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % self.block_size() != 0 {
            return None;
        }
        let mut bytes = (ne0 / self.block_size()).checked_mul(self.block_bytes())?;
        for &d in shape.iter().skip(1) {
            bytes = bytes.checked_mul(d)?;
        }
        Some(bytes)
    }

    /// Parses ggml's type name (case-insensitive), e.g. `"q8_0"`, `"F16"`, `"mxfp4"`.
    pub fn from_name(name: &str) -> Option<Self> {
        (0..sys::GGML_TYPE_COUNT)
            .filter_map(Self::from_raw)
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GgmlType({})", self.name())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(GgmlType::Q8_0.block_size(), 32);
        assert_eq!(GgmlType::Q8_0.block_bytes(), 34);
        assert_eq!(GgmlType::MXFP4.block_bytes(), 17);
        assert_eq!(GgmlType::F16.tensor_bytes(&[64, 3]), Some(384));
        assert_eq!(GgmlType::Q4_0.tensor_bytes(&[33]), None);
        assert_eq!(GgmlType::from_name("Q8_0"), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::from_raw(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::from_raw(10_000), None);
    }
}
