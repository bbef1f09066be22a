//! Compiles the native C baseline against the libraries llama-cpp-moe-sys built.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=native");
    let dep = |k: &str| env::var(format!("DEP_LLAMA_{k}")).unwrap_or_default();
    let include = dep("INCLUDE");
    let ggml_include = dep("GGML_INCLUDE");
    let lib_dir = dep("LIB_DIR");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bench_native");

    let compiler = cc::Build::new().get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-O2", "-std=c11", "native/bench_native.c", "-o"])
        .arg(&out)
        .arg(format!("-I{include}"))
        .arg(format!("-I{ggml_include}"))
        .arg(format!("-L{lib_dir}"));
    let static_link = !dep("LIBS").is_empty() && env::var("CARGO_FEATURE_DYNAMIC_LINK").is_err();
    if static_link {
        cmd.arg("-Wl,--start-group");
    }
    for lib in dep("LIBS").split(',').filter(|l| !l.is_empty()) {
        cmd.arg(format!("-l{lib}"));
    }
    if static_link {
        cmd.arg("-Wl,--end-group");
    }
    if !dep("OPENMP").is_empty() {
        cmd.arg(format!("-l{}", dep("OPENMP")));
    }
    cmd.args(["-lstdc++", "-lm", "-lpthread"]);
    let status = cmd.status().expect("run the C compiler");
    assert!(status.success(), "compiling benches/native/bench_native.c failed: {cmd:?}");
    println!("cargo:rustc-env=BENCH_NATIVE_EXE={}", out.display());
}
