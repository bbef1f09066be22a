//! `llama-cpp-moe-gguf` is pure Rust; this test links the pinned ggml and checks that
//! the Rust copies of ggml's knowledge agree with ggml itself: the type table, the f16
//! and bf16 conversions, the reference quantisers (byte for byte) and dequantisers, the
//! GGUF parser (every file the Rust reader accepts, ggml's `gguf_init_from_file` accepts
//! with the same metadata and tensor table), and the routed-expert classifier against
//! llama.cpp's `std::regex` on every tensor the factory writes.

mod gguf_support;

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use gguf_support::TempPath;
use llama_cpp_moe::model::{regex_search, EXPERTS_REGEX};
use llama_cpp_moe_gguf::quant::{self, f16_to_f32, f32_to_bf16, f32_to_f16};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufFile, MetaArray, MetaValue, TensorKind};
use llama_cpp_moe_sys as sys;

#[test]
fn type_table_matches_ggml() {
    assert_eq!(GgmlType::COUNT, sys::GGML_TYPE_COUNT);
    for raw in 0..sys::GGML_TYPE_COUNT {
        // SAFETY: raw is below GGML_TYPE_COUNT, so it indexes ggml's type-traits table;
        // ggml_type_name returns a static NUL-terminated string.
        let (blck, size, quantized, name) = unsafe {
            (
                sys::ggml_blck_size(raw),
                sys::ggml_type_size(raw),
                sys::ggml_is_quantized(raw),
                CStr::from_ptr(sys::ggml_type_name(raw)).to_str().unwrap(),
            )
        };
        let Some(t) = GgmlType::from_raw(raw) else {
            assert_eq!(blck, 0, "type {raw} ({name}) is valid in ggml");
            continue;
        };
        assert!(blck > 0, "type {raw} is removed in ggml");
        assert_eq!(t.name(), name, "type {raw}");
        assert_eq!(t.block_size(), blck as u64, "{name}: block size");
        assert_eq!(t.block_bytes(), size as u64, "{name}: block bytes");
        assert_eq!(t.is_quantized(), quantized, "{name}: is_quantized");
    }
}

/// Bit patterns spread over all of f32: every sign, exponent (subnormals, infinities and
/// NaNs included) and a stride of mantissas, plus the rounding-boundary neighbourhoods.
fn f32_patterns() -> impl Iterator<Item = u32> {
    let stride = (0..=u32::MAX).step_by(65_521);
    let boundaries = (0..=0x1ffu32).flat_map(|hi| {
        // Around the f16/bf16 rounding points: mantissa low bits near half.
        [
            0x0fff, 0x1000, 0x1001, 0x2fff, 0x3000, 0x7fff, 0x8000, 0x8001, 0x1_8000,
        ]
        .into_iter()
        .map(move |lo| (hi << 23) | lo)
    });
    stride.chain(boundaries)
}

#[test]
fn half_precision_conversions_match_ggml() {
    for bits in f32_patterns() {
        let v = f32::from_bits(bits);
        // SAFETY: pure conversion functions without preconditions.
        let (h, b) = unsafe { (sys::ggml_fp32_to_fp16(v), sys::ggml_fp32_to_bf16(v).bits) };
        assert_eq!(f32_to_f16(v), h, "f16 of {v:e} ({bits:#010x})");
        assert_eq!(f32_to_bf16(v), b, "bf16 of {v:e} ({bits:#010x})");
    }
    for h in 0..=u16::MAX {
        // SAFETY: pure conversion function without preconditions.
        let want = unsafe { sys::ggml_fp16_to_fp32(h) };
        let got = f16_to_f32(h);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "f32 of half {h:#06x}: {got:e} vs {want:e}"
        );
    }
}

/// Normal-ish values at a few scales, with blocks of zeros, one-hot blocks and ties.
fn test_values(n: usize) -> Vec<f32> {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| match (i / 32) % 8 {
            0 => 0.0,
            1 if i % 32 == 5 => 3.0,
            1 => 0.0,
            2 => ((i % 32) as f32 - 16.0) * 0.25,
            3 => (next() - 0.5) * 1e-6,
            4 => (next() - 0.5) * 1e4,
            _ => {
                // Sum of uniforms: roughly normal, std about 0.125.
                (next() + next() + next() + next() - 2.0) * 0.2165
            }
        })
        .collect()
}

#[test]
fn quantisers_match_ggml_byte_for_byte() {
    let (rows, per_row) = (64usize, 256usize);
    let x = test_values(rows * per_row);
    for ty in quant::SUPPORTED {
        let bytes = ty.tensor_bytes(&[per_row as u64, rows as u64]).unwrap() as usize;
        let mut ours = vec![0u8; bytes];
        quant::quantize(ty, &x, &mut ours).unwrap();
        let mut theirs = vec![0u8; bytes];
        // SAFETY: ty needs no importance matrix (none of the supported types does); x
        // holds rows * per_row floats and theirs the bytes of that many rows.
        let written = unsafe {
            sys::ggml_quantize_chunk(
                ty.raw(),
                x.as_ptr(),
                theirs.as_mut_ptr().cast(),
                0,
                rows as i64,
                per_row as i64,
                std::ptr::null(),
            )
        };
        assert_eq!(written, bytes, "{ty}");
        let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{ty}: bytes differ from ggml's");

        let mut back = vec![0f32; x.len()];
        quant::dequantize(ty, &ours, &mut back).unwrap();
        let mut want = x.clone();
        // SAFETY: the traits table has an entry for every valid type; to_float (absent
        // for f32, which needs none) reads the blocks of x.len() values from ours and
        // writes x.len() floats.
        unsafe {
            let traits = sys::ggml_get_type_traits(ty.raw());
            if let Some(to_float) = (*traits).to_float {
                to_float(ours.as_ptr().cast(), want.as_mut_ptr(), x.len() as i64);
            } else {
                assert_eq!(ty, GgmlType::F32, "only f32 has no dequantiser");
            }
        }
        for (i, (a, b)) in back.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty}: value {i}: {a} vs ggml {b}");
        }
    }
}

/// Owns a `gguf_context` so every exit path frees it.
struct GgmlGguf(NonNull<sys::gguf_context>);

impl Drop for GgmlGguf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_file and is freed exactly once.
        unsafe { sys::gguf_free(self.0.as_ptr()) }
    }
}

/// Copies a C string owned by a gguf context.
///
/// # Safety
/// `p` must be a valid NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> String {
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// What ggml's parser reports: (version, alignment, data offset, metadata, tensors as
/// (name, raw type, ne, nbytes, absolute offset)).
type GgmlView = (
    u32,
    u64,
    u64,
    Vec<(String, MetaValue)>,
    Vec<(String, u32, Vec<u64>, u64, u64)>,
);

/// Reads a file with ggml's `gguf_init_from_file`; `None` if ggml rejects it. Only call
/// it on files the Rust reader accepted (ggml has no bound on tensor data, and may abort
/// on input it does not expect).
fn ggml_view(path: &std::path::Path) -> Option<GgmlView> {
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: cpath is NUL-terminated and outlives the call; with ctx NULL ggml only
    // builds its own gguf_context, which GgmlGguf frees.
    let ctx = GgmlGguf(NonNull::new(unsafe {
        sys::gguf_init_from_file(cpath.as_ptr(), params)
    })?);
    let c = ctx.0.as_ptr();
    // Below, c is a valid context; indices are in 0..gguf_get_n_kv / 0..gguf_get_n_tensors,
    // and each typed getter is called only for the type ggml reported.
    // SAFETY: plain getters on a valid context.
    let (version, alignment, data_offset, n_kv, n_tensors) = unsafe {
        (
            sys::gguf_get_version(c),
            sys::gguf_get_alignment(c) as u64,
            sys::gguf_get_data_offset(c) as u64,
            sys::gguf_get_n_kv(c),
            sys::gguf_get_n_tensors(c),
        )
    };
    let mut metadata = Vec::new();
    for i in 0..n_kv {
        // SAFETY: see above.
        let key = unsafe { cstr(sys::gguf_get_key(c, i)) };
        // SAFETY: see above.
        metadata.push((key, unsafe { ggml_value(c, i) }));
    }
    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        // SAFETY: see above; gguf_get_tensor_ne points at GGML_MAX_DIMS (4) values.
        tensors.push(unsafe {
            let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(c, i), 4);
            (
                cstr(sys::gguf_get_tensor_name(c, i)),
                sys::gguf_get_tensor_type(c, i),
                ne.iter().map(|&d| d as u64).collect(),
                sys::gguf_get_tensor_size(c, i) as u64,
                data_offset + sys::gguf_get_tensor_offset(c, i) as u64,
            )
        });
    }
    Some((version, alignment, data_offset, metadata, tensors))
}

/// # Safety
/// `c` must be a valid context and `i` in `0..gguf_get_n_kv(c)`.
unsafe fn ggml_value(c: *const sys::gguf_context, i: i64) -> MetaValue {
    // SAFETY: guaranteed by the caller; each getter matches the reported type (the
    // GGUF_TYPE_* codes are fixed by the file format).
    unsafe {
        match sys::gguf_get_kv_type(c, i) {
            0 => MetaValue::U8(sys::gguf_get_val_u8(c, i)),
            1 => MetaValue::I8(sys::gguf_get_val_i8(c, i)),
            2 => MetaValue::U16(sys::gguf_get_val_u16(c, i)),
            3 => MetaValue::I16(sys::gguf_get_val_i16(c, i)),
            4 => MetaValue::U32(sys::gguf_get_val_u32(c, i)),
            5 => MetaValue::I32(sys::gguf_get_val_i32(c, i)),
            6 => MetaValue::F32(sys::gguf_get_val_f32(c, i)),
            7 => MetaValue::Bool(sys::gguf_get_val_bool(c, i)),
            8 => MetaValue::String(cstr(sys::gguf_get_val_str(c, i))),
            10 => MetaValue::U64(sys::gguf_get_val_u64(c, i)),
            11 => MetaValue::I64(sys::gguf_get_val_i64(c, i)),
            12 => MetaValue::F64(sys::gguf_get_val_f64(c, i)),
            _ => MetaValue::Array(ggml_array(c, i)),
        }
    }
}

/// # Safety
/// As [`ggml_value`], and value `i` must be an array.
unsafe fn ggml_array(c: *const sys::gguf_context, i: i64) -> MetaArray {
    // SAFETY: guaranteed by the caller. Non-string arrays are packed native-endian
    // scalars; gguf_get_arr_data points at n of them (bools one byte each).
    unsafe {
        let elem = sys::gguf_get_arr_type(c, i);
        let n = sys::gguf_get_arr_n(c, i);
        if elem == 8 {
            return MetaArray::String(
                (0..n)
                    .map(|j| cstr(sys::gguf_get_arr_str(c, i, j)))
                    .collect(),
            );
        }
        let data = sys::gguf_get_arr_data(c, i).cast::<u8>();
        let bytes = |size: usize| -> Vec<u8> {
            if n == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, n * size).to_vec()
            }
        };
        macro_rules! arr {
            ($t:ty, $v:ident) => {{
                const N: usize = std::mem::size_of::<$t>();
                MetaArray::$v(
                    bytes(N)
                        .chunks_exact(N)
                        .map(|b| <$t>::from_ne_bytes(b.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        match elem {
            0 => MetaArray::U8(bytes(1)),
            1 => arr!(i8, I8),
            2 => arr!(u16, U16),
            3 => arr!(i16, I16),
            4 => arr!(u32, U32),
            5 => arr!(i32, I32),
            6 => arr!(f32, F32),
            7 => MetaArray::Bool(bytes(1).iter().map(|&b| b != 0).collect()),
            10 => arr!(u64, U64),
            11 => arr!(i64, I64),
            _ => arr!(f64, F64),
        }
    }
}

/// Compares the Rust reader with ggml's parser on the file at `path`, which the Rust
/// reader accepted.
fn assert_same_as_ggml(f: &GgufFile, what: &str) {
    let (version, alignment, data_offset, metadata, tensors) =
        ggml_view(f.path()).unwrap_or_else(|| panic!("{what}: ggml rejects a file we accept"));
    assert_eq!(f.version(), version, "{what}");
    assert_eq!(f.alignment(), alignment, "{what}");
    assert_eq!(f.data_offset(), data_offset, "{what}");
    // ggml's C strings end at the first NUL and f32 NaNs never compare equal: compare
    // through Debug, which is exact for every value the factory and mutants produce.
    let ours: Vec<String> = f
        .metadata()
        .iter()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    let theirs: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    if ours != theirs {
        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        let contains_nul = f.metadata().iter().any(|(k, v)| {
            k.contains('\0')
                || matches!(v, MetaValue::String(s) if s.contains('\0'))
                || matches!(v, MetaValue::Array(MetaArray::String(a)) if a.iter().any(|s| s.contains('\0')))
        });
        assert!(
            contains_nul,
            "{what}: metadata differs at entry {at:?}: {:?} vs {:?}",
            at.map(|i| &ours[i]),
            at.map(|i| &theirs[i])
        );
    }
    assert_eq!(f.tensors().len(), tensors.len(), "{what}");
    for (t, (name, raw, ne, nbytes, offset)) in f.tensors().iter().zip(&tensors) {
        assert_eq!(&t.name, name, "{what}");
        assert_eq!(t.ty.raw(), *raw, "{what}: {name}");
        let mut shape = ne.clone();
        while shape.len() > 1 && shape.last() == Some(&1) {
            shape.pop();
        }
        assert_eq!(t.shape, shape, "{what}: {name}");
        assert_eq!(t.n_bytes, *nbytes, "{what}: {name}");
        assert_eq!(t.offset, *offset, "{what}: {name}");
    }
}

#[test]
fn the_rust_reader_agrees_with_ggmls_parser() {
    // Every architecture as the factory writes it.
    for arch in Arch::ALL {
        let path = TempPath::new(&format!("parity-{}.gguf", arch.cli_name()));
        SynthSpec::new(arch, Preset::Tiny)
            .seed(4)
            .write(&path.0)
            .unwrap();
        let f = GgufFile::open(&path.0).unwrap();
        assert_same_as_ggml(&f, arch.cli_name());

        // And llama.cpp's std::regex agrees with the classifier on every tensor name.
        for t in f.tensors() {
            assert_eq!(
                regex_search(EXPERTS_REGEX, &t.name),
                Some(t.kind() == TensorKind::RoutedExpert),
                "{}",
                t.name
            );
        }
    }

    // Damaged variants of one model: whenever the Rust reader accepts one, ggml must
    // accept it too and see the same thing.
    let mut good = Vec::new();
    SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
        .seed(9)
        .write_to(&mut good, |_| {})
        .unwrap();
    let path = TempPath::new("parity-mutant.gguf");
    std::fs::write(&path.0, &good).unwrap();
    let header_end = GgufFile::open(&path.0).unwrap().data_offset() as usize;
    let mut state = 0x9E37_79B9u64;
    let mut below = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % n as u64) as usize
    };
    let (mut accepted, mut variants) = (0, 0);
    for _ in 0..400 {
        let mut m = good.clone();
        for _ in 0..1 + below(3) {
            let i = below(header_end);
            m[i] ^= 1 << below(8);
        }
        if below(4) == 0 {
            m.truncate(below(m.len()));
        }
        std::fs::write(&path.0, &m).unwrap();
        variants += 1;
        if let Ok(f) = GgufFile::open(&path.0) {
            accepted += 1;
            assert_same_as_ggml(&f, &format!("variant {variants}"));
        }
    }
    eprintln!("{accepted} of {variants} damaged variants accepted, each as ggml reads it");
    assert!(
        accepted > 20,
        "only {accepted} of {variants} variants were accepted"
    );
}
