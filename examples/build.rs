//! rpaths for the examples, so they run without `LD_LIBRARY_PATH` on the machine that
//! built them: to the CUDA toolkit's libraries when llama-cpp-moe-sys links the CUDA
//! backend (a toolkit such as the wheels of scripts/cuda-toolkit.sh is not on the
//! loader's path), and to llama.cpp's own shared libraries in `dynamic-link` and
//! `dynamic-backends` builds. The sys crate's own `rustc-link-arg`s do not reach
//! dependents, hence this script and the direct dependency on it.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_CUDA_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_LIB_DIR");
    if let Ok(dir) = env::var("DEP_LLAMA_CUDA_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if let Ok(dir) = env::var("DEP_LLAMA_LIB_DIR") {
        if Path::new(&dir).join("libllama.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
