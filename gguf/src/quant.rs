//! Quantisation of f32 values into the tensor types the factory writes, in pure Rust.
//!
//! These follow ggml's reference quantisers (`quantize_row_*_ref`, which is what
//! `ggml_quantize_chunk` runs when no importance matrix is given), block layout and
//! rounding included, so a file written here holds what ggml itself would have written.
//! `llama-cpp/tests/gguf_ggml_parity.rs` compares both, byte for byte, against the linked
//! ggml.

use crate::types::GgmlType;

/// Why values could not be (de)quantised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The type has no quantiser here (only f32, f16, bf16, q4_0, q8_0 and mxfp4 do).
    #[error("type {0} is not supported (use f32, f16, bf16, q4_0, q8_0 or mxfp4)")]
    UnsupportedType(GgmlType),
    /// The number of values is not a multiple of the type's block size.
    #[error("{values} values do not split into whole {ty} blocks of {block}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Values given.
        values: usize,
        /// The type's block size.
        block: u64,
    },
    /// The byte buffer does not have the size the values take in this type.
    #[error("{values} values of {ty} take {expected} bytes, the buffer has {actual}")]
    WrongBufferSize {
        /// The type.
        ty: GgmlType,
        /// Values given.
        values: usize,
        /// Bytes they take.
        expected: u64,
        /// Bytes in the buffer.
        actual: usize,
    },
}

/// The types [`quantize`] and [`dequantize`] handle.
pub const SUPPORTED: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::MXFP4,
];

/// Values per block of q4_0, q8_0 and mxfp4.
const BLOCK: usize = 32;

/// The E2M1 values of an mxfp4 nibble, doubled (ggml's `kvalues_mxfp4`), so that the
/// block scale is half the E8M0 exponent's value.
const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Quantises `src` into `dst`, which must be exactly `ty.tensor_bytes(&[src.len()])`
/// bytes. Blocks never span rows, so a whole tensor can be passed at once.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check(ty, src.len(), dst.len())?;
    match ty {
        t if t == GgmlType::F32 => {
            for (out, v) in dst.chunks_exact_mut(4).zip(src) {
                out.copy_from_slice(&v.to_le_bytes());
            }
        }
        t if t == GgmlType::F16 => {
            for (out, &v) in dst.chunks_exact_mut(2).zip(src) {
                out.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        t if t == GgmlType::BF16 => {
            for (out, &v) in dst.chunks_exact_mut(2).zip(src) {
                out.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        t if t == GgmlType::Q8_0 => {
            for (out, x) in dst.chunks_exact_mut(2 + BLOCK).zip(src.chunks_exact(BLOCK)) {
                quantize_q8_0_block(x, out);
            }
        }
        t if t == GgmlType::Q4_0 => {
            for (out, x) in dst
                .chunks_exact_mut(2 + BLOCK / 2)
                .zip(src.chunks_exact(BLOCK))
            {
                quantize_q4_0_block(x, out);
            }
        }
        _ => {
            for (out, x) in dst
                .chunks_exact_mut(1 + BLOCK / 2)
                .zip(src.chunks_exact(BLOCK))
            {
                quantize_mxfp4_block(x, out);
            }
        }
    }
    Ok(())
}

/// Turns `src`, data of type `ty`, back into f32 values (`dst.len()` of them).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check(ty, dst.len(), src.len())?;
    match ty {
        t if t == GgmlType::F32 => {
            for (v, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        t if t == GgmlType::F16 => {
            for (v, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *v = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        t if t == GgmlType::BF16 => {
            for (v, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        t if t == GgmlType::Q8_0 => {
            for (x, b) in dst.chunks_exact_mut(BLOCK).zip(src.chunks_exact(2 + BLOCK)) {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for (v, &q) in x.iter_mut().zip(&b[2..]) {
                    *v = f32::from(q as i8) * d;
                }
            }
        }
        t if t == GgmlType::Q4_0 => {
            for (x, b) in dst
                .chunks_exact_mut(BLOCK)
                .zip(src.chunks_exact(2 + BLOCK / 2))
            {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let (lo, hi) = x.split_at_mut(BLOCK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                    *l = f32::from(i16::from(q & 0x0f) - 8) * d;
                    *h = f32::from(i16::from(q >> 4) - 8) * d;
                }
            }
        }
        _ => {
            for (x, b) in dst
                .chunks_exact_mut(BLOCK)
                .zip(src.chunks_exact(1 + BLOCK / 2))
            {
                let d = e8m0_half(b[0]);
                let (lo, hi) = x.split_at_mut(BLOCK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[1..]) {
                    *l = f32::from(MXFP4_VALUES[usize::from(q & 0x0f)]) * d;
                    *h = f32::from(MXFP4_VALUES[usize::from(q >> 4)]) * d;
                }
            }
        }
    }
    Ok(())
}

fn check(ty: GgmlType, values: usize, bytes: usize) -> Result<(), QuantError> {
    if !SUPPORTED.contains(&ty) {
        return Err(QuantError::UnsupportedType(ty));
    }
    let expected = ty
        .tensor_bytes(&[values as u64])
        .ok_or(QuantError::PartialBlock {
            ty,
            values,
            block: ty.block_size(),
        })?;
    if expected != bytes as u64 {
        return Err(QuantError::WrongBufferSize {
            ty,
            values,
            expected,
            actual: bytes,
        });
    }
    Ok(())
}

/// One q8_0 block: an f16 scale `amax / 127`, then 32 values rounded half away from zero.
fn quantize_q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, v) in out[2..].iter_mut().zip(x) {
        *q = ((v * inv).round() as i8) as u8;
    }
}

/// One q4_0 block: the value of largest magnitude (sign kept, first one on ties) maps to
/// -8; the f16 scale, then value `j` in the low nibble of byte `j` and value `16 + j` in
/// its high nibble, each truncated from `x / d + 8.5` and capped at 15.
fn quantize_q4_0_block(x: &[f32], out: &mut [u8]) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let nibble = |v: f32| ((v * inv + 8.5) as i8).min(15) as u8;
    let (lo, hi) = x.split_at(BLOCK / 2);
    for ((q, &l), &h) in out[2..].iter_mut().zip(lo).zip(hi) {
        *q = nibble(l) | (nibble(h) << 4);
    }
}

/// One mxfp4 block: an E8M0 exponent `floor(log2(amax)) - 2 + 127`, then each value's
/// nearest E2M1 code (first one on ties), packed like q4_0.
fn quantize_mxfp4_block(x: &[f32], out: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0f32, |m, v| if m < v.abs() { v.abs() } else { m });
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    out[0] = e;
    let nearest = |v: f32| {
        let mut best = 0u8;
        let mut best_err = (f32::from(MXFP4_VALUES[0]) * d - v).abs();
        for (i, &k) in MXFP4_VALUES.iter().enumerate().skip(1) {
            let err = (f32::from(k) * d - v).abs();
            if err < best_err {
                best = i as u8;
                best_err = err;
            }
        }
        best
    };
    let (lo, hi) = x.split_at(BLOCK / 2);
    for ((q, &l), &h) in out[1..].iter_mut().zip(lo).zip(hi) {
        *q = nearest(l) | (nearest(h) << 4);
    }
}

/// Half the value of an E8M0 exponent byte: `2^(e - 128)`, subnormal for `e < 2`.
fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(u32::from(e - 1) << 23)
    }
}

/// f32 to IEEE half-precision bits, rounding to nearest even; overflow gives infinity,
/// NaN a quiet NaN.
pub fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        return sign | if man == 0 { 0x7c00 } else { 0x7e00 };
    }
    // The exponent re-biased for f16 (bias 15 instead of 127).
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // Keep `shift` low bits of a significand out, rounding to nearest even.
    let round = |significand: u32, shift: u32| -> u32 {
        let kept = significand >> shift;
        let rest = significand & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rest > half || (rest == half && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        }
    };
    if e <= 0 {
        // Subnormal f16 (or zero): units of 2^-24. Values below 2^-25 round to zero.
        if e < -10 {
            return sign;
        }
        let significand = man | 0x0080_0000;
        return sign | round(significand, (14 - e) as u32) as u16;
    }
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    sign | round(((e as u32) << 23) | man, 13) as u16
}

/// IEEE half-precision bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24, exactly representable as a normal f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to bfloat16 bits, rounding to nearest even; NaN stays a (quiet) NaN.
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_rounds_to_nearest_even() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to infinity");
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7e00, 0x7e00);
        // 1 + 2^-11 is exactly between 1 and the next half; ties go to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        // Smallest subnormal 2^-24; 2^-25 is a tie that rounds to even (zero).
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        for h in (0..=0xffffu16).filter(|h| (h >> 10) & 0x1f != 0x1f) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x} round-trips");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(
            f32_to_bf16(f32::from_bits(0x3f80_8000)),
            0x3f80,
            "tie to even"
        );
        assert_eq!(
            f32_to_bf16(f32::from_bits(0x3f81_8000)),
            0x3f82,
            "tie to even"
        );
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
    }

    #[test]
    fn quantised_blocks_come_back_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 8.0)
            .collect();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for ty in SUPPORTED {
            let mut q = vec![0u8; ty.tensor_bytes(&[64]).unwrap() as usize];
            quantize(ty, &x, &mut q).unwrap();
            let mut back = vec![0f32; 64];
            dequantize(ty, &q, &mut back).unwrap();
            // Half a quantisation step of the coarsest grid: q4_0 steps amax/8, mxfp4
            // steps up to 4 units of amax/12 near the top of its range.
            let tol = match ty {
                t if t == GgmlType::Q4_0 => amax / 8.0,
                t if t == GgmlType::MXFP4 => amax / 3.0,
                t if t == GgmlType::Q8_0 => amax / 127.0,
                _ => amax / 128.0,
            };
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty}: {a} came back as {b}");
            }
        }
    }

    #[test]
    fn wrong_sizes_and_types_are_errors() {
        let x = [0f32; 33];
        let mut q = [0u8; 64];
        assert!(matches!(
            quantize(GgmlType::Q8_0, &x, &mut q),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(matches!(
            quantize(GgmlType::Q8_0, &x[..32], &mut q),
            Err(QuantError::WrongBufferSize { expected: 34, .. })
        ));
        let q4k = GgmlType::from_name("q4_k").unwrap();
        assert_eq!(
            quantize(q4k, &[0.0; 256], &mut [0u8; 144]),
            Err(QuantError::UnsupportedType(q4k))
        );
    }
}
