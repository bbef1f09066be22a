//! rpaths for this crate's own test executables (unit and integration tests), so `cargo test --features
//! cuda` runs without `LD_LIBRARY_PATH` on the machine that built it: to the CUDA
//! toolkit's libraries when the sys crate links the CUDA backend (a toolkit such as the
//! wheels of scripts/cuda-toolkit.sh is not on the loader's path), and to llama.cpp's
//! shared libraries in `dynamic-link` builds. The library itself gets none: a binary
//! that depends on this crate sets its own (examples/build.rs shows how) or uses
//! `LD_LIBRARY_PATH`.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_CUDA_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_LIB_DIR");
    let mut dirs = Vec::new();
    dirs.extend(env::var("DEP_LLAMA_CUDA_LIB_DIR").ok());
    dirs.extend(
        env::var("DEP_LLAMA_LIB_DIR")
            .ok()
            .filter(|dir| Path::new(dir).join("libllama.so").exists()),
    );
    for dir in dirs {
        // Reaches what cargo links for this package only: its test executables, as
        // the library itself is an rlib. Doctests get no link arguments from cargo.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
