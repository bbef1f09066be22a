//! Tensor data: deterministic values streamed in bounded chunks.

use std::io::{self, Write};

use super::plan::{Init, Planned};
use super::rng::{fnv1a, Rng};
use crate::quant::{self, f32_to_f16};
use crate::types::GgmlType;

/// How random weights are produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Normal f32 values quantised like ggml's reference quantisers (tiny/small presets).
    Quantize,
    /// Random quantised blocks with valid scales written directly, for multi-GB files:
    /// the same value scale, orders of magnitude faster than quantising f32 noise.
    RandomBlocks,
}

/// The types the factory can fill: those [`quant::quantize`] handles.
pub(crate) const SUPPORTED: [GgmlType; 6] = quant::SUPPORTED;

/// Output bytes produced per chunk: bounds memory whatever the tensor size.
const CHUNK_BYTES: u64 = 4 << 20;

/// Reusable scratch space.
#[derive(Default)]
pub(crate) struct Scratch {
    f32s: Vec<f32>,
    bytes: Vec<u8>,
}

/// Writes the data of one planned tensor (exactly `desc.nbytes()` bytes).
pub(crate) fn fill(
    p: &Planned,
    seed: u64,
    mode: Mode,
    out: &mut dyn Write,
    s: &mut Scratch,
) -> io::Result<()> {
    let d = &p.desc;
    let ne0 = d.shape[0];
    let rows = d.n_elements() / ne0.max(1);
    let row_bytes = d.ty.tensor_bytes(&[ne0]).unwrap_or(0);
    let rows_per_chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1);
    let mut rng = Rng::new(seed, fnv1a(d.name.as_bytes()));
    let mut done = 0u64;
    while done < rows {
        let n = rows_per_chunk.min(rows - done);
        let nbytes = (n * row_bytes) as usize;
        s.bytes.resize(nbytes, 0);
        match (p.init, mode) {
            (Init::Normal(std), Mode::RandomBlocks)
                if random_blocks(d.ty, std, &mut rng, &mut s.bytes) => {}
            _ => {
                let count = (n * ne0) as usize;
                s.f32s.resize(count, 0.0);
                match p.init {
                    Init::Ones => s.f32s.fill(1.0),
                    Init::Zeros => s.f32s.fill(0.0),
                    Init::Normal(std) => s.f32s.iter_mut().for_each(|x| *x = rng.normal() * std),
                }
                if let Some(values) = &p.values {
                    let start = (done * ne0) as usize;
                    s.f32s.copy_from_slice(&values[start..start + count]);
                }
                // The type is one of SUPPORTED (checked when the spec is validated) and
                // the buffers are sized for n whole rows, so this cannot fail.
                quant::quantize(d.ty, &s.f32s, &mut s.bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            }
        }
        // Zero bytes are zero values in every supported type (the scales are zero too).
        for (i, row) in s.bytes.chunks_exact_mut(row_bytes as usize).enumerate() {
            if p.silent_rows.get(done as usize + i) == Some(&true) {
                row.fill(0);
            }
        }
        out.write_all(&s.bytes)?;
        done += n;
    }
    Ok(())
}

/// Fills `buf` with random blocks of `ty` whose values have standard deviation about
/// `std`. Returns false for types it has no direct generator for.
fn random_blocks(ty: GgmlType, std: f32, rng: &mut Rng, buf: &mut [u8]) -> bool {
    if ty == GgmlType::Q8_0 {
        // int8 quants uniform over [-128, 127] have std ~73.9; d scales them to `std`.
        let d = f32_to_f16(std / 73.9).to_le_bytes();
        rng.fill_bytes(buf);
        for block in buf.chunks_exact_mut(34) {
            block[..2].copy_from_slice(&d);
        }
        true
    } else if ty == GgmlType::Q4_0 {
        // (q - 8) for q uniform in 0..16 has std ~4.61.
        let d = f32_to_f16(std / 4.61).to_le_bytes();
        rng.fill_bytes(buf);
        for block in buf.chunks_exact_mut(18) {
            block[..2].copy_from_slice(&d);
        }
        true
    } else if ty == GgmlType::MXFP4 {
        // Uniform E2M1 codes (ggml stores them doubled: 0..12) have rms ~5.85; a value is
        // code * 2^(e - 128), so e = 128 + log2(std / 5.85).
        let e = (128.0 + (std / 5.85).log2().round()).clamp(1.0, 254.0) as u8;
        rng.fill_bytes(buf);
        for block in buf.chunks_exact_mut(17) {
            block[0] = e;
        }
        true
    } else if ty == GgmlType::F16 || ty == GgmlType::F32 || ty == GgmlType::BF16 {
        // Uniform in [-a, a] with a = std * sqrt(3): cheap and the same variance.
        let a = std * 3f32.sqrt();
        let width = if ty == GgmlType::F32 { 4 } else { 2 };
        for x in buf.chunks_exact_mut(width) {
            let u = (rng.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
            let v = (2.0 * u - 1.0) * a;
            if ty == GgmlType::F32 {
                x.copy_from_slice(&v.to_le_bytes());
            } else if ty == GgmlType::F16 {
                x.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            } else {
                x.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::TensorDesc;

    fn dequant(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        quant::dequantize(ty, data, &mut out).expect("dequantise");
        out
    }

    #[test]
    fn both_modes_hit_the_requested_scale() {
        let std = 1.0 / 64f32.sqrt();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::MXFP4,
            GgmlType::F16,
        ] {
            for mode in [Mode::Quantize, Mode::RandomBlocks] {
                let p = Planned {
                    desc: TensorDesc {
                        name: "w".into(),
                        ty,
                        shape: vec![64, 256],
                    },
                    init: Init::Normal(std),
                    silent_rows: Vec::new(),
                    values: None,
                };
                let mut buf = Vec::new();
                fill(&p, 1, mode, &mut buf, &mut Scratch::default()).unwrap();
                assert_eq!(buf.len() as u64, p.desc.nbytes());
                let vals = dequant(ty, &buf, 64 * 256);
                assert!(vals.iter().all(|v| v.is_finite()));
                let rms = (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt();
                assert!(
                    (rms / std - 1.0).abs() < 0.45,
                    "{ty} {mode:?}: rms {rms} vs std {std}"
                );
            }
        }
    }
}
