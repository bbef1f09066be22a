//! Compiles the native C baseline against the libraries llama-cpp-moe-sys built.
//!
//! Inputs are the `DEP_LLAMA_*` variables the sys crate's build script exports (its
//! `links = "llama"` metadata): include dirs, the library dir, the library list in link
//! order, and the OpenMP runtime if the CPU backend uses one. The executable goes to
//! `OUT_DIR`; its path reaches the harness as `env!("BENCH_NATIVE_EXE")`.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=native");
    let dep = |k: &str| env::var(format!("DEP_LLAMA_{k}")).unwrap_or_default();
    let include = dep("INCLUDE");
    let ggml_include = dep("GGML_INCLUDE");
    let lib_dir = dep("LIB_DIR");
    let libs = dep("LIBS");
    assert!(
        !include.is_empty() && !lib_dir.is_empty() && !libs.is_empty(),
        "DEP_LLAMA_INCLUDE/LIB_DIR/LIBS are not set: llama-cpp-moe-sys must be a direct \
         dependency of this package"
    );
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bench_native");

    let compiler = cc::Build::new().get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-O2", "-std=c11", "native/bench_native.c", "-o"])
        .arg(&out)
        .arg(format!("-I{include}"))
        .arg(format!("-I{ggml_include}"))
        .arg(format!("-L{lib_dir}"));
    // Static archives reference each other (llama -> ggml -> ggml-cpu -> ggml-base and
    // back), so resolve them as a group. Shared builds need no grouping but an rpath.
    let shared = std::fs::read_dir(&lib_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libllama.so"))
        })
        .unwrap_or(false);
    if shared {
        cmd.arg(format!("-Wl,-rpath,{lib_dir}"));
    } else {
        cmd.arg("-Wl,--start-group");
    }
    for lib in libs.split(',').filter(|l| !l.is_empty()) {
        cmd.arg(format!("-l{lib}"));
    }
    if !shared {
        cmd.arg("-Wl,--end-group");
    }
    let openmp = dep("OPENMP");
    if !openmp.is_empty() {
        cmd.arg(format!("-l{openmp}"));
    }
    // The CUDA libraries llama-cpp-moe-sys links for its `cuda` feature, from the
    // toolkit it found, with an rpath (for the C program and for our Rust binaries) so
    // both run without LD_LIBRARY_PATH when the toolkit is not a system one.
    let cuda_libs = dep("CUDA_LIBS");
    if !cuda_libs.is_empty() {
        for dir in [dep("CUDA_LIB_DIR"), dep("CUDA_STUBS_DIR")] {
            if !dir.is_empty() {
                cmd.arg(format!("-L{dir}"));
            }
        }
        let cuda_lib_dir = dep("CUDA_LIB_DIR");
        if !cuda_lib_dir.is_empty() {
            cmd.arg(format!("-Wl,-rpath,{cuda_lib_dir}"));
            println!("cargo:rustc-link-arg=-Wl,-rpath,{cuda_lib_dir}");
        }
        for lib in cuda_libs.split(',') {
            cmd.arg(format!("-l{lib}"));
        }
    }
    cmd.args(["-lstdc++", "-lm", "-lpthread"]);
    let status = cmd.status().expect("run the C compiler");
    assert!(
        status.success(),
        "compiling benches/native/bench_native.c failed: {cmd:?}"
    );
    println!("cargo:rustc-env=BENCH_NATIVE_EXE={}", out.display());
}
