//! Shape-only synthetic files: the full-size tensor table, a sparse data region.

use llama_cpp_moe_gguf::synth::{PublicModel, SynthSpec};
use llama_cpp_moe_gguf::GgufFile;

#[test]
fn a_full_size_gpt_oss_120b_takes_no_data_blocks_and_reads_back() {
    let dir = std::env::temp_dir().join(format!("gguf-shape-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in [PublicModel::GptOss120b, PublicModel::Qwen3_235bA22b] {
        let path = dir.join(format!("{model}.gguf"));
        let spec = SynthSpec::public(model);
        let report = spec.write_shape_only(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), spec.file_size().unwrap(), "{model}");
        assert_eq!(report.bytes, meta.len());
        let file = GgufFile::open(&path).unwrap();
        // Only the header and table occupy disk; the tensor data is a hole.
        let table_bytes = file.data_offset();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let on_disk = meta.blocks() * 512;
            println!(
                "{model}: {} bytes ({:.1} GiB) apparent, {} on disk, table {} bytes, \
                 {:.2}e9 params, written in {:.3} s",
                meta.len(),
                meta.len() as f64 / (1u64 << 30) as f64,
                on_disk,
                table_bytes,
                report.n_params as f64 / 1e9,
                report.seconds
            );
            assert!(
                on_disk <= table_bytes + (1 << 20),
                "{model}: {on_disk} bytes on disk for a {table_bytes}-byte table"
            );
        }
        let expected = spec.tensors().unwrap();
        assert_eq!(file.tensors().len(), expected.len(), "{model}");
        for (got, want) in file.tensors().iter().zip(&expected) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.n_bytes, want.nbytes());
        }
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::remove_dir(&dir).ok();
}

#[test]
fn public_shapes_have_their_published_sizes() {
    // Parameter counts from the model cards (docs/synthetic-models.md); the factory
    // counts every tensor element, so it must land within a few percent.
    for (model, published) in [
        (PublicModel::GptOss120b, 116.83e9),
        (PublicModel::GptOss20b, 20.9e9),
        (PublicModel::Qwen3_235bA22b, 235.0e9),
        (PublicModel::Qwen3_30bA3b, 30.5e9),
    ] {
        let n = SynthSpec::public(model).n_params().unwrap() as f64;
        println!(
            "{model}: {:.2}e9 parameters (published {:.2}e9)",
            n / 1e9,
            published / 1e9
        );
        assert!(
            (n - published).abs() / published < 0.03,
            "{model}: {n} vs {published}"
        );
    }
}
