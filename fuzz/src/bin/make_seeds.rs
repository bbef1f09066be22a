//! Writes the seed corpus of every fuzz target into `fuzz/seeds/TARGET/`: the smallest
//! synthetic GGUF files llama.cpp still loads (one dense, one MoE), typical override
//! patterns and command lines, and context parameters. Run: `cargo run --manifest-path fuzz/Cargo.toml
//! --no-default-features --bin make_seeds` (scripts/fuzz.sh does).

use std::path::Path;

use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufWriter, MetaArray, MetaValue, TensorDesc};

/// One layer, 32-wide, the factory's smallest vocabulary: a few tens of KiB.
fn smallest(arch: Arch) -> SynthSpec {
    let mut h = Hparams::preset(arch, Preset::Tiny);
    h.n_layer = 1;
    h.n_embd = 32;
    h.n_head = 2;
    h.n_head_kv = 1;
    h.head_dim = 16;
    h.n_ff = 32;
    h.n_vocab = 276; // the synthetic tokenizer's minimum: 256 bytes, 4 specials, 16 merges
    if h.n_expert > 0 {
        h.n_expert = 4;
        h.n_expert_used = 2;
        h.n_ff_exp = 32;
    }
    h.n_ctx_train = 64;
    SynthSpec::new(arch, Preset::Tiny).hparams(h).seed(1)
}

/// A few hundred bytes that reach every branch of the reader: each metadata value type,
/// arrays of each, tensors of 1 to 4 dimensions in plain and block-quantised types.
fn every_value_type() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let values = [
        ("general.architecture", MetaValue::String("qwen3moe".into())),
        ("qwen3moe.block_count", MetaValue::U32(2)),
        ("qwen3moe.expert_count", MetaValue::U64(4)),
        ("qwen3moe.rope.freq_base", MetaValue::F32(1e6)),
        ("t.u8", MetaValue::U8(1)),
        ("t.i8", MetaValue::I8(-1)),
        ("t.u16", MetaValue::U16(2)),
        ("t.i16", MetaValue::I16(-2)),
        ("t.i32", MetaValue::I32(-3)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.i64", MetaValue::I64(-4)),
        ("t.f64", MetaValue::F64(0.5)),
        ("t.a_u8", MetaValue::Array(MetaArray::U8(vec![1, 2]))),
        ("t.a_i32", MetaValue::Array(MetaArray::I32(vec![-1]))),
        ("t.a_f32", MetaValue::Array(MetaArray::F32(vec![0.25]))),
        ("t.a_bool", MetaValue::Array(MetaArray::Bool(vec![false]))),
        (
            "t.a_str",
            MetaValue::Array(MetaArray::String(vec!["a".into(), "".into()])),
        ),
        ("t.a_u64", MetaValue::Array(MetaArray::U64(vec![7]))),
    ];
    for (key, value) in values {
        w.add_kv(key, value).expect("seed metadata");
    }
    let tensors = [
        ("token_embd.weight", GgmlType::F32, vec![4, 2]),
        ("blk.0.ffn_up_exps.weight", GgmlType::Q8_0, vec![32, 1, 2]),
        (
            "blk.1.ffn_down_shexp.weight",
            GgmlType::F16,
            vec![2, 1, 1, 2],
        ),
        ("blk.1.attn_q.weight", GgmlType::Q4_0, vec![64]),
    ];
    for (name, ty, shape) in tensors {
        w.add_tensor(TensorDesc {
            name: name.into(),
            ty,
            shape,
        })
        .expect("seed tensor");
    }
    w.set_alignment(8).expect("alignment");
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, t, out| {
        out.write_all(&vec![0x11; t.nbytes() as usize])
    })
    .expect("write seed");
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let tmp = std::env::temp_dir().join(format!("make-seeds-{}.gguf", std::process::id()));
    for (arch, name) in [(Arch::Llama, "llama"), (Arch::Qwen3Moe, "qwen3moe")] {
        smallest(arch).write(&tmp).expect("synthetic model");
        let bytes = std::fs::read(&tmp).expect("read model");
        println!("{name}: {} bytes", bytes.len());
        write(&root.join("gguf_open"), &format!("{name}-seed"), &bytes);
        write(&root.join("model_load"), &format!("{name}-seed"), &bytes);
    }
    let _ = std::fs::remove_file(&tmp);
    let small = every_value_type();
    println!("every-value-type: {} bytes", small.len());
    write(&root.join("gguf_open"), "every-value-type-seed", &small);

    // control byte, then pattern \n target \n tensor name \n layer bytes.
    let overrides: [&[u8]; 5] = [
        b"\x01blk\\.(2|3)\\.ffn_.*_exps\nCPU\nblk.2.ffn_up_exps.weight\n\x00\x01",
        b"\x00ffn_(up|down)_exps\nCPU\nblk.10.ffn_down_exps.weight\n",
        b"\x3dexps$\nRPC0[127.0.0.1:50052]\nblk.0.ffn_gate_exps.weight\n\x02\x03\x07",
        b"\xe6((\nNoSuchGPU\nx\n\x05",
        b"\x02[a-z]+\\d{1,3}\n.*\\.weight\ntoken_embd.weight\n",
    ];
    for (i, seed) in overrides.iter().enumerate() {
        write(&root.join("override_patterns"), &format!("seed-{i}"), seed);
    }

    // Model, n_ctx, n_batch, n_ubatch, n_seq_max, threads, threads_batch, flash
    // attention, K type, V type, embeddings, pooling, flags (offload_kqv 1, op_offload 2,
    // swa_full 4, kv_unified 8, perf 16, then flip embeddings 32 and shift sequence 0 by
    // one 64), RoPE base, RoPE scale. A size byte below 64 is the size itself, 64-159
    // picks a boundary with the next byte, 160+ reads a u16 next (see
    // llama_cpp_moe_fuzz::context_case).
    let contexts: [&[u8]; 8] = [
        // qwen3moe, 256 / 64 / 64, one sequence.
        &[
            0, 160, 0, 1, 160, 64, 0, 160, 64, 0, 1, 2, 2, 0, 0, 0, 0, 0, 3, 0, 0,
        ],
        // gpt-oss (sliding window), n_ctx 0, 4 sequences, flash attention, full SWA
        // cache, unified.
        &[1, 0, 32, 16, 4, 2, 2, 1, 0, 0, 0, 0, 15, 0, 0],
        // llama with 64-wide heads trained on 64 tokens: n_ctx 0, batch 128 > n_ctx,
        // 8 sequences, F32 cache.
        &[6, 0, 64, 15, 63, 8, 2, 2, 2, 1, 1, 0, 0, 3, 0, 0],
        // deepseek, flash attention, Q8_0 cache, mean-pooled embeddings of 2 sequences.
        &[3, 160, 0, 2, 160, 0, 1, 32, 2, 2, 2, 1, 3, 3, 1, 2, 1, 0, 0],
        // mixtral, embeddings without pooling, 3 sequences, RoPE 10000 x 0.5.
        &[4, 160, 0, 1, 16, 16, 3, 2, 2, 0, 0, 0, 1, 1, 3, 4, 2],
        // phimoe, ubatch 32 > batch 8, unified cache of 2 sequences, no op offload.
        &[2, 160, 0, 2, 8, 32, 2, 2, 2, 2, 1, 1, 0, 0, 9, 0, 0],
        // qwen3moe, mean pooling over 3 sequences with a 16-token micro-batch: refused.
        &[0, 160, 0, 1, 16, 16, 3, 2, 2, 0, 0, 0, 1, 2, 3, 0, 0],
        // the 64-wide llama, Q8_0 cache (rotated), flip embeddings on, shift.
        &[6, 160, 0, 1, 32, 32, 2, 2, 2, 1, 3, 3, 0, 0, 99, 0, 0],
    ];
    for (i, seed) in contexts.iter().enumerate() {
        write(&root.join("context_params"), &format!("seed-{i}"), seed);
    }

    // Mode, model, destination sequence, then a state or state file the factory's
    // models saved (see llama_cpp_moe_fuzz::check_state_load).
    llama_cpp_moe::logging::set_silent(true);
    for (name, input) in llama_cpp_moe_fuzz::state_seeds() {
        write(&root.join("state_load"), &name, &input);
    }

    // LoRA adapters for the tiny llama (see llama_cpp_moe_fuzz::check_lora_load).
    for (name, bytes) in llama_cpp_moe_fuzz::lora_seeds() {
        write(&root.join("lora_load"), &name, &bytes);
    }

    let lines: [&[&str]; 6] = [
        &[
            "-m",
            "x.gguf",
            "-ngl",
            "all",
            "-ub",
            "128",
            "-ot",
            "a=CPU,b=RPC0",
            "--n-cpu-moe",
            "3",
            "-fa",
            "on",
        ],
        &[
            "-cmoe",
            "-ncmoe",
            "2",
            "-dev",
            "A,B",
            "--rpc",
            "h:1",
            "-c",
            "256",
            "-t",
            "2",
            "-n",
            "8",
            "--cpu-moe-layers",
            "2-3",
        ],
        &["--synthetic", "qwen3moe:tiny", "--no-stream", "-p", "hello"],
        &["--synthetic", "deepseek:full"],
        &["-ngl", "-1", "-ot", "=CPU", "--"],
        &["--help"],
    ];
    for (i, line) in lines.iter().enumerate() {
        write(
            &root.join("example_args"),
            &format!("seed-{i}"),
            line.join("\0").as_bytes(),
        );
    }
}
