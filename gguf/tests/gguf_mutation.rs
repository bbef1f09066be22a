//! Damaged files never crash the reader: >= 1000 truncated and mutated variants of a tiny
//! model each give a typed error or a successful open, never a panic (a panic fails the
//! test) and never an allocation sized by a corrupt count.

mod gguf_support;

use std::collections::BTreeMap;

use gguf_support::TempPath;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgufError, GgufFile};

/// Small deterministic generator for the mutations (SplitMix64).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    2,
    3,
    4,
    0x7F,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

fn category(r: &Result<GgufFile, GgufError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(GgufError::NotGguf { .. }) => "not_gguf",
        Err(GgufError::Truncated { .. }) => "truncated",
        Err(GgufError::UnsupportedVersion { .. }) => "version",
        Err(
            GgufError::Malformed { .. }
            | GgufError::UnknownTensorType { .. }
            | GgufError::TensorOffsetMismatch { .. },
        ) => "malformed",
        Err(GgufError::TensorDataOutOfBounds { .. }) => "data_oob",
        Err(_) => "other",
    }
}

/// Offsets of the fields that follow each occurrence of a length-prefixed `name`.
fn field_offsets(file: &[u8], name: &str) -> Option<usize> {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    file.windows(needle.len())
        .position(|w| w == needle.as_slice())
}

#[test]
fn a_thousand_damaged_files_give_typed_errors_never_a_crash() {
    let spec = SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny).seed(9);
    let mut good = Vec::new();
    spec.write_to(&mut good, |_| {}).unwrap();
    let path = TempPath::new("mutant.gguf");
    std::fs::write(&path.0, &good).unwrap();
    let header_end = GgufFile::open(&path.0).unwrap().data_offset() as usize;

    // Anchors for targeted corruption: length prefixes of keys and tensor names, and the
    // type/count/shape/offset fields right after them.
    let mut anchors = vec![8usize, 16];
    for name in [
        "general.architecture",
        "general.alignment",
        "qwen3moe.block_count",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.chat_template",
        "token_embd.weight",
        "blk.0.ffn_up_exps.weight",
        "blk.1.attn_q.weight",
        "output.weight",
    ] {
        let at = field_offsets(&good, name).unwrap_or_else(|| panic!("{name} not found"));
        let after = at + 8 + name.len();
        anchors.extend([
            at,
            after,
            after + 4,
            after + 8,
            after + 12,
            after + 16,
            after + 20,
            after + 24,
        ]);
    }

    let mut g = Gen(0xD1CE);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut variants = 0;
    let check = |bytes: &[u8], counts: &mut BTreeMap<&'static str, usize>| {
        std::fs::write(&path.0, bytes).unwrap();
        let r = GgufFile::open(&path.0);
        if let Ok(f) = &r {
            // A successful open must describe data that lies inside the file.
            for t in f.tensors() {
                assert!(
                    t.offset + t.n_bytes <= f.file_size(),
                    "{} escapes the file",
                    t.name
                );
            }
        }
        *counts.entry(category(&r)).or_default() += 1;
    };

    // 1. Truncations: every length in the header region at a stride, plus random ones.
    for len in (0..header_end).step_by(header_end / 200 + 1) {
        check(&good[..len], &mut counts);
        variants += 1;
    }
    for _ in 0..150 {
        check(&good[..g.below(good.len())], &mut counts);
        variants += 1;
    }
    // 2. Random byte flips in the header region.
    for _ in 0..350 {
        let mut m = good.clone();
        for _ in 0..1 + g.below(8) {
            let i = g.below(header_end);
            m[i] ^= 1 << g.below(8);
        }
        check(&m, &mut counts);
        variants += 1;
    }
    // 3. Interesting values written over structural fields.
    for _ in 0..300 {
        let mut m = good.clone();
        let at = anchors[g.below(anchors.len())];
        let v = INTERESTING[g.below(INTERESTING.len())].to_le_bytes();
        let width = [1, 4, 8][g.below(3)];
        if at + width <= m.len() {
            m[at..at + width].copy_from_slice(&v[..width]);
        }
        check(&m, &mut counts);
        variants += 1;
    }
    // 4. Random 8-byte words anywhere in the header, and a wrong magic / version.
    for _ in 0..100 {
        let mut m = good.clone();
        let i = g.below(header_end - 8);
        m[i..i + 8].copy_from_slice(&g.next().to_le_bytes());
        check(&m, &mut counts);
        variants += 1;
    }
    for v in [0u32, 1, 2, 4, 0x0300_0000, u32::MAX] {
        let mut m = good.clone();
        m[4..8].copy_from_slice(&v.to_le_bytes());
        check(&m, &mut counts);
        variants += 1;
    }
    let mut m = good.clone();
    m[0] = b'X';
    check(&m, &mut counts);
    variants += 1;

    assert!(variants >= 1000, "only {variants} variants");
    // The variants really exercise the error paths, not just the happy one.
    for kind in [
        "truncated",
        "malformed",
        "data_oob",
        "not_gguf",
        "version",
        "ok",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} case among {counts:?}"
        );
    }
    assert_eq!(counts.get("other"), None, "{counts:?}");
    eprintln!("{variants} variants: {counts:?}");
}
