//! The CUDA toolkit: where it is, and how the linked CUDA backend links against it.

use std::env;
use std::path::{Path, PathBuf};

/// The toolkit root: `CUDA_PATH` or `CUDA_HOME` when it holds `bin/nvcc`, else the
/// directory above the `nvcc` found on `PATH`, else `/usr/local/cuda` if it exists.
pub fn toolkit_root() -> Option<PathBuf> {
    let from_env = ["CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(env::var_os)
        .map(PathBuf::from)
        .find(|root| root.join("bin").join("nvcc").exists());
    from_env
        .or_else(nvcc_on_path_root)
        .or_else(|| Some(PathBuf::from("/usr/local/cuda")).filter(|p| p.exists()))
}

fn nvcc_on_path_root() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("nvcc"))
        .find(|nvcc| nvcc.is_file())
        // /usr/bin/nvcc is often a symlink into the real toolkit.
        .and_then(|nvcc| nvcc.canonicalize().ok())
        .and_then(|nvcc| Some(nvcc.parent()?.parent()?.to_path_buf()))
}

/// Whether ggml's CUDA backend uses the driver API (`libcuda`, for its virtual-memory
/// pool). A binary linked against `libcuda.so.1` does not even start on a machine
/// without the NVIDIA driver, so the linked backend goes without it (`GGML_CUDA_NO_VMM`,
/// falling back to ggml's ordinary pool) and the binary still runs on the CPU anywhere.
/// A runtime-loaded CUDA module (`dynamic-backends`) keeps ggml's default when it can be
/// linked (when the driver is missing only the module fails to load); a toolkit without
/// the driver library or its stub (the wheels of scripts/cuda-toolkit.sh) cannot, and
/// cmake would stop at `CUDA::cuda_driver`. `LLAMA_CPP_CUDA_VMM=1` or `=0` overrides.
pub fn uses_driver_api(dynamic_backends: bool) -> bool {
    println!("cargo:rerun-if-env-changed=LLAMA_CPP_CUDA_VMM");
    match env::var("LLAMA_CPP_CUDA_VMM").as_deref() {
        Ok("1" | "ON" | "on" | "true") => true,
        Ok("0" | "OFF" | "off" | "false") => false,
        _ => dynamic_backends && driver_library_linkable(),
    }
}

/// Whether a `libcuda.so` to link against exists: the toolkit's stub, or the driver's.
fn driver_library_linkable() -> bool {
    let in_toolkit = toolkit_root()
        .as_deref()
        .and_then(library_dir)
        .is_some_and(|dir| {
            dir.join("stubs/libcuda.so").exists() || dir.join("libcuda.so").exists()
        });
    in_toolkit
        || [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .iter()
        .any(|dir| Path::new(dir).join("libcuda.so").exists())
}

/// Link lines for the statically linked CUDA backend: cudart and cuBLAS (and the driver
/// when the backend uses it).
///
/// Toolkits installed as system packages are on the loader's path; one elsewhere
/// (`CUDA_PATH`, the wheels of scripts/cuda-toolkit.sh) is not, and an rpath from here
/// only reaches this package's own tests (`rustc-link-arg` does not propagate). So the
/// directory and the libraries are also exported as `DEP_LLAMA_CUDA_LIB_DIR` and
/// `DEP_LLAMA_CUDA_LIBS` for dependents' build scripts (the examples and benches add an
/// rpath from them), and the README documents `LD_LIBRARY_PATH` for everyone else.
pub fn link(dynamic_backends: bool) {
    let root = toolkit_root();
    let lib_dir = root.as_deref().and_then(library_dir);
    match &lib_dir {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
            println!("cargo:cuda_lib_dir={}", dir.display());
        }
        None => println!(
            "cargo:warning=llama-cpp-moe-sys: no libcudart.so under the CUDA toolkit {}; \
             relying on the linker's default search path",
            root.as_deref()
                .map_or_else(|| "(none found)".into(), |r| r.display().to_string())
        ),
    }
    let mut libs = vec!["cudart", "cublas", "cublasLt"];
    if uses_driver_api(dynamic_backends) {
        // Only the stub is in the toolkit; the real libcuda.so.1 comes with the driver.
        if let Some(stubs) = lib_dir.map(|d| d.join("stubs")).filter(|d| d.is_dir()) {
            println!("cargo:rustc-link-search=native={}", stubs.display());
            println!("cargo:cuda_stubs_dir={}", stubs.display());
        }
        libs.push("cuda");
    }
    for lib in &libs {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:cuda_libs={}", libs.join(","));
}

/// The directory holding `libcudart.so`: `lib64` in NVIDIA's installers, `lib` in the
/// wheels, `targets/<arch>/lib` in some distribution packages.
fn library_dir(root: &Path) -> Option<PathBuf> {
    [
        "lib64",
        "lib",
        "targets/x86_64-linux/lib",
        "targets/sbsa-linux/lib",
    ]
    .iter()
    .map(|sub| root.join(sub))
    .find(|dir| dir.join("libcudart.so").exists())
}
