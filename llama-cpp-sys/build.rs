//! Builds the pinned llama.cpp with cmake, compiles the C++ shim and generates bindings.
//!
//! Environment variables read here (each next to its `rerun-if-env-changed`):
//!
//! | variable | meaning |
//! |---|---|
//! | `LLAMA_CPP_SRC` | use this llama.cpp checkout instead of the pin |
//! | `LLAMA_CPP_PREBUILT_DIR` | skip cmake: link the libraries already installed under `DIR/lib` (an earlier build's install prefix) |
//! | `LLAMA_CPP_BUILD_TYPE` | `Release` (default) or `RelWithDebInfo`; never follows the cargo profile |
//! | `LLAMA_CPP_CUDA_ARCHITECTURES` | forwarded as `CMAKE_CUDA_ARCHITECTURES` (feature `cuda`) |
//! | `CUDA_PATH`, `CUDA_HOME` | CUDA toolkit root (feature `cuda`) |
//! | `VULKAN_SDK` | Vulkan SDK root (feature `vulkan`) |

use std::env;
use std::path::{Path, PathBuf};

#[path = "build/cuda.rs"]
mod cuda;
#[path = "build/flags.rs"]
mod flags;
#[path = "build/source.rs"]
mod source;

struct Features {
    cuda: bool,
    vulkan: bool,
    metal: bool,
    rpc: bool,
    openmp: bool,
    native: bool,
    dynamic_link: bool,
    dynamic_backends: bool,
}

impl Features {
    fn from_env() -> Self {
        let on = |name: &str| env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
        Features {
            cuda: on("CUDA"),
            vulkan: on("VULKAN"),
            metal: on("METAL"),
            rpc: on("RPC"),
            openmp: on("OPENMP"),
            native: on("NATIVE"),
            dynamic_link: on("DYNAMIC_LINK") || on("DYNAMIC_BACKENDS"),
            dynamic_backends: on("DYNAMIC_BACKENDS"),
        }
    }
}

/// Target facts from cargo, never `cfg!()`: the build script runs on the host.
struct Target {
    os: String,
    arch: String,
    env: String,
    cross: bool,
}

impl Target {
    fn from_env() -> Self {
        let var = |k: &str| env::var(k).unwrap_or_default();
        Target {
            os: var("CARGO_CFG_TARGET_OS"),
            arch: var("CARGO_CFG_TARGET_ARCH"),
            env: var("CARGO_CFG_TARGET_ENV"),
            cross: var("HOST") != var("TARGET"),
        }
    }
}

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let features = Features::from_env();
    let target = Target::from_env();

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-changed=wrapper.h");

    let src = source::resolve(&manifest_dir).unwrap_or_else(|msg| fail(&msg));
    println!(
        "cargo:rerun-if-changed={}",
        src.dir.join("include").display()
    );
    println!("cargo:rerun-if-changed={}", src.dir.join("src").display());
    println!("cargo:rerun-if-changed={}", src.dir.join("ggml").display());
    println!(
        "cargo:rerun-if-changed={}",
        src.dir.join("CMakeLists.txt").display()
    );

    check_backend_prerequisites(&features, &target);

    println!("cargo:rerun-if-env-changed=LLAMA_CPP_PREBUILT_DIR");
    let install_dir = match env::var_os("LLAMA_CPP_PREBUILT_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !dir.join("lib").is_dir() {
                fail(&format!(
                    "LLAMA_CPP_PREBUILT_DIR={} has no lib/ directory; point it at the install \
                     prefix of an earlier build (its OUT_DIR, which holds lib/ and include/)",
                    dir.display()
                ));
            }
            println!(
                "cargo:warning=llama-cpp-moe-sys: linking prebuilt llama.cpp from {}",
                dir.display()
            );
            dir
        }
        None => build_with_cmake(&src.dir, &out_dir, &features, &target),
    };

    let lib_dir = install_dir.join("lib");
    link_libraries(&lib_dir, &features, &target);
    // For dependents' build scripts (DEP_LLAMA_*): e.g. the native C benchmark links
    // the very same libraries.
    println!("cargo:include={}", src.dir.join("include").display());
    println!(
        "cargo:ggml_include={}",
        src.dir.join("ggml/include").display()
    );
    println!("cargo:lib_dir={}", lib_dir.display());
    compile_shim(&src.dir, &features);
    generate_bindings(&src.dir, &manifest_dir, &out_dir, &features);
    write_version(&src, &out_dir, &install_dir);
}

fn fail(message: &str) -> ! {
    eprintln!("\nllama-cpp-moe-sys: {message}\n");
    std::process::exit(1);
}

/// Checks what each GPU backend needs before cmake spends minutes compiling.
fn check_backend_prerequisites(features: &Features, target: &Target) {
    if features.cuda {
        println!("cargo:rerun-if-env-changed=CUDA_PATH");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        let has_nvcc = cuda::toolkit_root().is_some_and(|r| r.join("bin").join("nvcc").exists());
        if !has_nvcc {
            fail(
                "feature `cuda` needs the CUDA toolkit, and none was found: set CUDA_PATH \
                 (or CUDA_HOME) to the toolkit root that contains bin/nvcc, or put nvcc on \
                 PATH; without root, `export CUDA_PATH=$(scripts/cuda-toolkit.sh)` assembles \
                 one from NVIDIA's Python wheels",
            );
        }
    }
    if features.vulkan {
        println!("cargo:rerun-if-env-changed=VULKAN_SDK");
        if let Err(msg) = flags::check_vulkan_headers(env::var_os("VULKAN_SDK").map(PathBuf::from))
        {
            fail(&msg);
        }
    }
    if features.metal && target.os != "macos" && target.os != "ios" {
        fail(&format!(
            "feature `metal` needs a macOS or iOS target, not `{}`",
            target.os
        ));
    }
}

fn build_type() -> String {
    println!("cargo:rerun-if-env-changed=LLAMA_CPP_BUILD_TYPE");
    match env::var("LLAMA_CPP_BUILD_TYPE") {
        Err(_) => "Release".to_owned(),
        Ok(t) if t == "Release" || t == "RelWithDebInfo" => t,
        Ok(other) => fail(&format!(
            "LLAMA_CPP_BUILD_TYPE={other:?} is not supported: use Release or RelWithDebInfo \
             (a Debug llama.cpp makes every model run crawl)"
        )),
    }
}

fn build_with_cmake(src: &Path, out_dir: &Path, features: &Features, target: &Target) -> PathBuf {
    let on_off = |b: bool| if b { "ON" } else { "OFF" };
    let mut config = cmake::Config::new(src);
    // The cmake crate would follow the cargo profile; a Debug C++ build is far too slow.
    config.profile(&build_type());
    config.out_dir(out_dir);

    for off in [
        "LLAMA_BUILD_TESTS",
        "LLAMA_BUILD_TOOLS",
        "LLAMA_BUILD_EXAMPLES",
        "LLAMA_BUILD_SERVER",
        "LLAMA_BUILD_APP",
        "LLAMA_BUILD_COMMON",
        "LLAMA_BUILD_UI",
        "LLAMA_OPENSSL",
        "LLAMA_CURL",
        "LLAMA_SUBPROCESS",
        "GGML_BUILD_TESTS",
        "GGML_BUILD_EXAMPLES",
        "GGML_CCACHE",
    ] {
        config.define(off, "OFF");
    }
    config.define("CMAKE_INSTALL_LIBDIR", "lib");
    config.define("BUILD_SHARED_LIBS", on_off(features.dynamic_link));
    config.define("GGML_CUDA", on_off(features.cuda));
    config.define("GGML_VULKAN", on_off(features.vulkan));
    config.define("GGML_METAL", on_off(features.metal));
    config.define("GGML_RPC", on_off(features.rpc));
    config.define("GGML_OPENMP", on_off(features.openmp));
    config.define("GGML_BACKEND_DL", on_off(features.dynamic_backends));

    let native = features.native && !target.cross && !features.dynamic_backends;
    if features.native && features.dynamic_backends {
        println!(
            "cargo:warning=llama-cpp-moe-sys: feature `native` is ignored with \
             `dynamic-backends` (ggml cannot feature-check a -march=native module)"
        );
    }
    config.define("GGML_NATIVE", on_off(native));

    if features.dynamic_backends {
        // Let ggml_backend_load_all() find the modules of this build without any setup.
        config.define("GGML_BACKEND_DIR", out_dir.join("lib"));
    }
    if features.cuda {
        println!("cargo:rerun-if-env-changed=LLAMA_CPP_CUDA_ARCHITECTURES");
        if let Ok(arch) = env::var("LLAMA_CPP_CUDA_ARCHITECTURES") {
            config.define("CMAKE_CUDA_ARCHITECTURES", arch);
        }
        // CMake looks for nvcc only on PATH and in /usr/local/cuda: name the toolkit
        // the prerequisite check found, so that CUDA_PATH alone is enough.
        if let Some(root) = cuda::toolkit_root() {
            config.define("CUDAToolkit_ROOT", &root);
            let nvcc = root.join("bin").join("nvcc");
            if nvcc.exists() {
                config.define("CMAKE_CUDA_COMPILER", nvcc);
            }
        }
        config.define(
            "GGML_CUDA_NO_VMM",
            on_off(!cuda::uses_driver_api(features.dynamic_backends)),
        );
    }

    let compiler = cc::Build::new().cpp(true).get_compiler();
    let gcc_major = flags::gcc_major_version(compiler.path());
    for flag in flags::amx_workaround_flags(gcc_major, native, &target.arch) {
        config.cflag(flag);
        config.cxxflag(flag);
    }
    if target.os == "linux" && !features.dynamic_link {
        config.define("CMAKE_POSITION_INDEPENDENT_CODE", "ON");
    }

    let install = config.build();
    println!(
        "cargo:rustc-env=LLAMA_CPP_MOE_CMAKE_BUILD_DIR={}",
        install.join("build").display()
    );
    install
}

fn link_libraries(lib_dir: &Path, features: &Features, target: &Target) {
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    let kind = if features.dynamic_link {
        "dylib"
    } else {
        "static"
    };
    let mut libs = vec!["llama", "ggml"];
    // With dynamic backends the backends (cpu included) are modules loaded at run time.
    if !features.dynamic_backends {
        libs.push("ggml-cpu");
        if features.rpc {
            libs.push("ggml-rpc");
        }
        if features.cuda {
            libs.push("ggml-cuda");
        }
        if features.vulkan {
            libs.push("ggml-vulkan");
        }
        if features.metal {
            libs.push("ggml-metal");
            libs.push("ggml-blas");
        }
    }
    libs.push("ggml-base");
    for lib in &libs {
        println!("cargo:rustc-link-lib={kind}={lib}");
    }
    println!("cargo:libs={}", libs.join(","));
    if features.dynamic_link {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }

    if !features.dynamic_backends {
        if features.cuda {
            cuda::link(features.dynamic_backends);
        }
        if features.vulkan {
            println!("cargo:rerun-if-env-changed=VULKAN_SDK");
            if let Some(sdk) = env::var_os("VULKAN_SDK") {
                println!(
                    "cargo:rustc-link-search=native={}",
                    Path::new(&sdk).join("lib").display()
                );
            }
            println!("cargo:rustc-link-lib=dylib=vulkan");
        }
        if features.metal {
            for fw in ["Foundation", "Metal", "MetalKit", "Accelerate"] {
                println!("cargo:rustc-link-lib=framework={fw}");
            }
        }
        if features.openmp && target.os == "linux" && target.env == "gnu" {
            println!("cargo:rustc-link-lib=dylib=gomp");
            println!("cargo:openmp=gomp");
        }
    }
    match target.os.as_str() {
        "macos" | "ios" => println!("cargo:rustc-link-lib=dylib=c++"),
        "windows" => {}
        _ => println!("cargo:rustc-link-lib=dylib=stdc++"),
    }
}

fn compile_shim(src: &Path, features: &Features) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("shim/llama_moe_shim.cpp")
        .include("shim")
        .include(src.join("include"))
        .include(src.join("ggml/include"))
        .include(src.join("src"))
        .warnings(true);
    if features.dynamic_link {
        build.define("LLAMA_SHARED", None);
        build.define("GGML_SHARED", None);
    }
    // Release whatever the cargo profile: the shim sits in hot-ish paths (placement walks).
    build.opt_level(2);
    build.compile("llama_moe_shim");
}

fn generate_bindings(src: &Path, manifest_dir: &Path, out_dir: &Path, features: &Features) {
    let mut builder = bindgen::Builder::default()
        .header(manifest_dir.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", src.join("include").display()))
        .clang_arg(format!("-I{}", src.join("ggml/include").display()))
        .clang_arg(format!("-I{}", manifest_dir.join("shim").display()))
        .allowlist_function("llama_.*|ggml_.*|gguf_.*")
        .allowlist_type("llama_.*|ggml_.*|gguf_.*")
        .allowlist_var("LLAMA_.*|GGML_.*|GGUF_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    // Headers of optional backends are only declared when their library is linked in.
    let linked_backends = !features.dynamic_backends;
    for (on, define) in [
        (features.rpc && linked_backends, "LLAMA_MOE_WITH_RPC"),
        (features.cuda && linked_backends, "LLAMA_MOE_WITH_CUDA"),
        (features.vulkan && linked_backends, "LLAMA_MOE_WITH_VULKAN"),
    ] {
        if on {
            builder = builder.clang_arg(format!("-D{define}"));
        }
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on wrapper.h: {e}")));
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings.rs: {e}")));
}

fn write_version(src: &source::Source, out_dir: &Path, install_dir: &Path) {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let llama = source::cmake_version(&read(&src.dir.join("CMakeLists.txt")), "LLAMA");
    let ggml = source::cmake_version(&read(&src.dir.join("ggml/CMakeLists.txt")), "GGML");
    let version = format!("llama {llama}-dev, ggml {ggml}, source: {}", src.origin);
    let code = format!(
        "/// The llama.cpp this crate was built from: llama and ggml versions and where the source came from.\n\
         pub const LLAMA_CPP_VERSION: &str = {version:?};\n\
         /// The llama.cpp source directory used by the build (headers live under it).\n\
         pub const LLAMA_CPP_SOURCE_DIR: &str = {:?};\n\
         /// The install prefix holding the built llama.cpp libraries (`lib/`).\n\
         pub const LLAMA_CPP_INSTALL_DIR: &str = {:?};\n",
        src.dir.display().to_string(),
        install_dir.display().to_string(),
    );
    std::fs::write(out_dir.join("version.rs"), code)
        .unwrap_or_else(|e| fail(&format!("cannot write version.rs: {e}")));
}
