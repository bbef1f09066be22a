//! ggml tensor types as they appear in GGUF files, with ggml's type table in Rust.

use std::fmt;

/// A ggml tensor type (`enum ggml_type`), as stored in a GGUF tensor table.
///
/// A newtype rather than an enum: GGUF files may carry any type ggml knows, and the
/// reader must be able to report types this crate has no special handling for.
///
/// The table behind [`GgmlType::name`], [`GgmlType::block_size`] and
/// [`GgmlType::block_bytes`] is ggml's own at the pinned llama.cpp, written out in Rust so
/// that reading a GGUF file needs no C library; `llama-cpp/tests/gguf_ggml_parity.rs`
/// checks every entry against `ggml_type_name`, `ggml_blck_size`, `ggml_type_size` and
/// `ggml_is_quantized`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

/// One row of ggml's type-traits table.
struct Traits {
    name: &'static str,
    /// Elements per block; 0 marks a removed type that GGUF files may not use.
    block_size: u32,
    /// Bytes per block.
    block_bytes: u32,
    quantized: bool,
}

const fn float(name: &'static str, bytes: u32) -> Traits {
    Traits {
        name,
        block_size: 1,
        block_bytes: bytes,
        quantized: false,
    }
}

const fn quant(name: &'static str, block_size: u32, block_bytes: u32) -> Traits {
    Traits {
        name,
        block_size,
        block_bytes,
        quantized: true,
    }
}

const fn removed() -> Traits {
    Traits {
        name: "",
        block_size: 0,
        block_bytes: 0,
        quantized: false,
    }
}

/// Super-block size of the k-quants and i-quants (`QK_K`).
const QK_K: u32 = 256;

/// ggml's type table, indexed by the raw `ggml_type` value (`GGML_TYPE_COUNT` entries).
/// Block byte sizes follow the block structs of `ggml-common.h`.
const TABLE: [Traits; 43] = [
    float("f32", 4),                                                  // 0
    float("f16", 2),                                                  // 1
    quant("q4_0", 32, 2 + 16),                                        // 2
    quant("q4_1", 32, 2 * 2 + 16),                                    // 3
    removed(),                                                        // 4: Q4_2
    removed(),                                                        // 5: Q4_3
    quant("q5_0", 32, 2 + 4 + 16),                                    // 6
    quant("q5_1", 32, 2 * 2 + 4 + 16),                                // 7
    quant("q8_0", 32, 2 + 32),                                        // 8
    quant("q8_1", 32, 2 * 2 + 32),                                    // 9
    quant("q2_K", QK_K, 2 * 2 + QK_K / 16 + QK_K / 4),                // 10
    quant("q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),                // 11
    quant("q4_K", QK_K, 2 * 2 + 12 + QK_K / 2),                       // 12
    quant("q5_K", QK_K, 2 * 2 + 12 + QK_K / 2 + QK_K / 8),            // 13
    quant("q6_K", QK_K, 2 + QK_K / 16 + 3 * QK_K / 4),                // 14
    quant("q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2),                    // 15
    quant("iq2_xxs", QK_K, 2 + QK_K / 8 * 2),                         // 16
    quant("iq2_xs", QK_K, 2 + QK_K / 8 * 2 + QK_K / 32),              // 17
    quant("iq3_xxs", QK_K, 2 + 3 * (QK_K / 8)),                       // 18
    quant("iq1_s", QK_K, 2 + QK_K / 8 + QK_K / 16),                   // 19
    quant("iq4_nl", 32, 2 + 16),                                      // 20
    quant("iq3_s", QK_K, 2 + 13 * (QK_K / 32) + QK_K / 64),           // 21
    quant("iq2_s", QK_K, 2 + QK_K / 4 + QK_K / 16),                   // 22
    quant("iq4_xs", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2),              // 23
    float("i8", 1),                                                   // 24
    float("i16", 2),                                                  // 25
    float("i32", 4),                                                  // 26
    float("i64", 8),                                                  // 27
    float("f64", 8),                                                  // 28
    quant("iq1_m", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),           // 29
    float("bf16", 2),                                                 // 30
    removed(),                                                        // 31: Q4_0_4_4
    removed(),                                                        // 32: Q4_0_4_8
    removed(),                                                        // 33: Q4_0_8_8
    quant("tq1_0", QK_K, 2 + QK_K / 64 + (QK_K - 4 * QK_K / 64) / 5), // 34
    quant("tq2_0", QK_K, 2 + QK_K / 4),                               // 35
    removed(),                                                        // 36: IQ4_NL_4_4
    removed(),                                                        // 37: IQ4_NL_4_8
    removed(),                                                        // 38: IQ4_NL_8_8
    quant("mxfp4", 32, 1 + 16),                                       // 39
    quant("nvfp4", 64, 64 / 16 + 32),                                 // 40
    quant("q1_0", 128, 2 + 128 / 8),                                  // 41
    quant("q2_0", 64, 2 + 64 / 4),                                    // 42
];

impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self(0);
    /// 16-bit IEEE float.
    pub const F16: Self = Self(1);
    /// 4-bit blocks of 32 with one f16 scale.
    pub const Q4_0: Self = Self(2);
    /// 8-bit blocks of 32 with one f16 scale.
    pub const Q8_0: Self = Self(8);
    /// bfloat16.
    pub const BF16: Self = Self(30);
    /// OCP microscaling FP4: E2M1 values in blocks of 32 with an E8M0 scale (gpt-oss experts).
    pub const MXFP4: Self = Self(39);

    /// Number of raw values in ggml's type enumeration at the pinned llama.cpp
    /// (`GGML_TYPE_COUNT`); every valid type is below it.
    pub const COUNT: u32 = TABLE.len() as u32;

    /// The type with this raw `ggml_type` value, if ggml can store it in a GGUF file
    /// (in range and not one of the removed types whose block size is 0).
    pub fn from_raw(raw: u32) -> Option<Self> {
        let traits = TABLE.get(raw as usize)?;
        (traits.block_size > 0).then_some(Self(raw))
    }

    /// Every type a GGUF file may use, in raw-value order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..Self::COUNT).filter_map(Self::from_raw)
    }

    fn traits(self) -> &'static Traits {
        // Every GgmlType comes from a constant or from_raw, both of which index TABLE.
        &TABLE[self.0 as usize]
    }

    /// The raw `ggml_type` value.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// ggml's name for the type (`"q8_0"`, `"f16"`, `"q4_K"`, ...).
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per quantisation block (1 for plain float and integer types).
    pub fn block_size(self) -> u64 {
        self.traits().block_size.into()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.traits().block_bytes.into()
    }

    /// Whether the type is a block-quantised one.
    pub fn is_quantized(self) -> bool {
        self.traits().quantized
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
        Self::all().find(|t| t.name().eq_ignore_ascii_case(name))
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
    fn sizes_of_the_types_the_factory_writes() {
        assert_eq!(GgmlType::Q8_0.block_size(), 32);
        assert_eq!(GgmlType::Q8_0.block_bytes(), 34);
        assert_eq!(GgmlType::MXFP4.block_bytes(), 17);
        assert_eq!(GgmlType::F16.tensor_bytes(&[64, 3]), Some(384));
        assert_eq!(GgmlType::Q4_0.tensor_bytes(&[33]), None);
        assert_eq!(GgmlType::from_name("Q8_0"), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::from_name("q4_k").map(GgmlType::raw), Some(12));
        assert_eq!(GgmlType::from_raw(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::from_raw(GgmlType::COUNT), None);
        assert_eq!(GgmlType::from_raw(10_000), None);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let all: Vec<GgmlType> = GgmlType::all().collect();
        assert_eq!(all.len(), 43 - 8, "eight raw values are removed types");
        for t in &all {
            assert_eq!(GgmlType::from_name(t.name()), Some(*t), "{t}");
            assert!(t.block_bytes() > 0 && t.block_size() > 0, "{t}");
            assert_eq!(t.is_quantized(), t.block_size() > 1, "{t}");
        }
    }
}
