//! Builds the pinned llama.cpp with cmake, compiles the C++ shim and writes the bindings.
//!
//! Environment variables read here (each next to its `rerun-if-env-changed`):
//!
//! | variable | meaning |
//! |---|---|
//! | `LLAMA_CPP_SRC` | use this llama.cpp checkout instead of the pin |
//! | `LLAMA_CPP_PREBUILT_DIR` | skip cmake: link the libraries already installed under `DIR/lib` (an earlier build's install prefix) |
//! | `LLAMA_CPP_BUILD_TYPE` | `Release` (default) or `RelWithDebInfo`; never follows the cargo profile |
//! | `LLAMA_CPP_CUDA_ARCHITECTURES` | forwarded as `CMAKE_CUDA_ARCHITECTURES` (feature `cuda`) |
//! | `LLAMA_CPP_MOE_REGENERATE_BINDINGS` | run bindgen for every bindings part and also write them to this directory |
//! | `CUDA_PATH`, `CUDA_HOME` | CUDA toolkit root (feature `cuda`) |
//! | `VULKAN_SDK` | Vulkan SDK root (feature `vulkan`) |
//! | `DOCS_RS` | documentation build: checked-in bindings only, no llama.cpp source, cmake or compiler |
//! | `CMAKE_GENERATOR` | cmake's generator; unset, Ninja when `ninja` runs (not for Windows targets), else cmake's default |
//!
//! The C++ (llama.cpp and the shim) is built once per target directory, not once per
//! cargo profile: see build/cache.rs.

use std::env;
use std::path::{Path, PathBuf};

#[path = "build/bindings.rs"]
mod bindings;
#[path = "build/cache.rs"]
mod cache;
#[path = "build/cuda.rs"]
mod cuda;
#[path = "build/flags.rs"]
mod flags;
#[path = "build/source.rs"]
mod source;
#[path = "build/tools.rs"]
mod tools;

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
    triple: String,
    host: String,
    os: String,
    arch: String,
    env: String,
    pointer_width: String,
    cross: bool,
}

impl Target {
    fn from_env() -> Self {
        let var = |k: &str| env::var(k).unwrap_or_default();
        Target {
            triple: var("TARGET"),
            host: var("HOST"),
            os: var("CARGO_CFG_TARGET_OS"),
            arch: var("CARGO_CFG_TARGET_ARCH"),
            env: var("CARGO_CFG_TARGET_ENV"),
            pointer_width: var("CARGO_CFG_TARGET_POINTER_WIDTH"),
            cross: var("HOST") != var("TARGET"),
        }
    }

    /// The checked-in bindings were generated for x86_64 Linux with glibc; other 64-bit
    /// glibc targets share every type they contain (bindgen's layout assertions would
    /// stop the build otherwise). Elsewhere bindgen runs.
    fn uses_checked_in_bindings(&self) -> bool {
        self.os == "linux" && self.env == "gnu" && self.pointer_width == "64"
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
    println!("cargo:rerun-if-changed={}", bindings::CHECKED_IN_DIR);

    println!("cargo:rerun-if-env-changed=DOCS_RS");
    if env::var_os("DOCS_RS").is_some() {
        documentation_build(&manifest_dir, &out_dir, &features);
        return;
    }

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
    compiler_env_reruns(&target);
    let cache_root = cache::root(&out_dir);

    println!("cargo:rerun-if-env-changed=LLAMA_CPP_PREBUILT_DIR");
    let install_dir = match env::var_os("LLAMA_CPP_PREBUILT_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !dir.join("lib").is_dir() {
                fail(&format!(
                    "LLAMA_CPP_PREBUILT_DIR={} has no lib/ directory; point it at the install \
                     prefix of an earlier build (LLAMA_CPP_INSTALL_DIR, which holds lib/ and \
                     include/)",
                    dir.display()
                ));
            }
            println!(
                "cargo:warning=llama-cpp-moe-sys: linking prebuilt llama.cpp from {}",
                dir.display()
            );
            dir
        }
        None => build_with_cmake(&src, &cache_root, &features, &target),
    };

    let mut lib_dir = install_dir.join("lib");
    if features.dynamic_link {
        lib_dir = mirror_shared_libraries(&lib_dir, &out_dir.join("lib"));
    }
    link_libraries(&lib_dir, &features, &target);
    // For dependents' build scripts (DEP_LLAMA_*): e.g. the native C benchmark links
    // the very same libraries.
    println!("cargo:include={}", src.dir.join("include").display());
    println!(
        "cargo:ggml_include={}",
        src.dir.join("ggml/include").display()
    );
    println!("cargo:lib_dir={}", lib_dir.display());
    compile_shim(&src, &manifest_dir, &cache_root, &features, &target);
    write_bindings(&src.dir, &manifest_dir, &out_dir, &features, &target);
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

/// The compilers cmake will be told to use, configured as the cmake crate configures them
/// (no optimisation or debug flags of the cargo profile: cmake's build type decides).
fn cmake_compiler(cpp: bool, target: &Target) -> cc::Tool {
    cc::Build::new()
        .cargo_metadata(false)
        .cpp(cpp)
        .opt_level(0)
        .debug(false)
        .warnings(false)
        .host(&target.host)
        .target(&target.triple)
        .try_get_compiler()
        .unwrap_or_else(|e| {
            let kind = if cpp { "C++" } else { "C" };
            fail(&tools::missing_tool_message(
                &format!("a {kind} compiler"),
                &e.to_string(),
            ))
        })
}

/// Environment that changes what cc or cmake compile: part of the cache keys, and a
/// reason to run this script again.
fn compiler_env(target: &Target) -> Vec<String> {
    let suffix = target.triple.replace('-', "_");
    let mut names = Vec::new();
    for base in ["CC", "CXX", "CFLAGS", "CXXFLAGS"] {
        names.push(base.to_owned());
        names.push(format!("{base}_{suffix}"));
        names.push(format!("{base}_{}", target.triple));
    }
    names.extend(
        [
            "CRATE_CC_NO_DEFAULTS",
            "CMAKE",
            "CMAKE_TOOLCHAIN_FILE",
            "CMAKE_GENERATOR",
            "CMAKE_GENERATOR_PLATFORM",
            "CMAKE_PREFIX_PATH",
            "MACOSX_DEPLOYMENT_TARGET",
            "SDKROOT",
        ]
        .map(String::from),
    );
    names
}

fn compiler_env_reruns(target: &Target) {
    for name in compiler_env(target) {
        println!("cargo:rerun-if-env-changed={name}");
    }
}

/// Adds a compiler's identity to a cache key: path, flags and version banner.
fn add_compiler(key: &mut cache::Key, name: &str, tool: &cc::Tool) -> Result<String, String> {
    let version = tools::version_line(tool.path());
    key.add(&format!("{name} path"), tool.path().display());
    let args: Vec<String> = tool
        .args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    key.add(&format!("{name} args"), args.join(" "));
    key.add(
        &format!("{name} version"),
        version.as_deref().unwrap_or("unavailable"),
    );
    version
}

fn build_with_cmake(
    src: &source::Source,
    cache_root: &Path,
    features: &Features,
    target: &Target,
) -> PathBuf {
    let on_off = |b: bool| if b { "ON" } else { "OFF" };
    let mut defines: Vec<(&str, String)> = Vec::new();
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
        defines.push((off, "OFF".into()));
    }
    defines.push(("CMAKE_INSTALL_LIBDIR", "lib".into()));
    defines.push(("BUILD_SHARED_LIBS", on_off(features.dynamic_link).into()));
    defines.push(("GGML_CUDA", on_off(features.cuda).into()));
    defines.push(("GGML_VULKAN", on_off(features.vulkan).into()));
    defines.push(("GGML_METAL", on_off(features.metal).into()));
    defines.push(("GGML_RPC", on_off(features.rpc).into()));
    defines.push(("GGML_OPENMP", on_off(features.openmp).into()));
    defines.push(("GGML_BACKEND_DL", on_off(features.dynamic_backends).into()));

    let native = features.native && !target.cross && !features.dynamic_backends;
    if features.native && features.dynamic_backends {
        println!(
            "cargo:warning=llama-cpp-moe-sys: feature `native` is ignored with \
             `dynamic-backends` (ggml cannot feature-check a -march=native module)"
        );
    }
    defines.push(("GGML_NATIVE", on_off(native).into()));

    if features.cuda {
        println!("cargo:rerun-if-env-changed=LLAMA_CPP_CUDA_ARCHITECTURES");
        if let Ok(arch) = env::var("LLAMA_CPP_CUDA_ARCHITECTURES") {
            defines.push(("CMAKE_CUDA_ARCHITECTURES", arch));
        }
        // CMake looks for nvcc only on PATH and in /usr/local/cuda: name the toolkit
        // the prerequisite check found, so that CUDA_PATH alone is enough.
        if let Some(root) = cuda::toolkit_root() {
            let nvcc = root.join("bin").join("nvcc");
            defines.push(("CUDAToolkit_ROOT", root.display().to_string()));
            if nvcc.exists() {
                defines.push(("CMAKE_CUDA_COMPILER", nvcc.display().to_string()));
            }
        }
        let no_vmm = !cuda::uses_driver_api(features.dynamic_backends);
        defines.push(("GGML_CUDA_NO_VMM", on_off(no_vmm).into()));
    }
    if target.os == "linux" && !features.dynamic_link {
        defines.push(("CMAKE_POSITION_INDEPENDENT_CODE", "ON".into()));
    }

    let generator = cmake_generator(target);
    let c_compiler = cmake_compiler(false, target);
    let cxx_compiler = cmake_compiler(true, target);
    let gcc_major = flags::gcc_major_version(cxx_compiler.path());
    let extra_flags = flags::amx_workaround_flags(gcc_major, native, &target.arch);
    let build_type = build_type();

    let mut key = cache::Key::new("llama.cpp cmake build v1");
    key.add("source", src.dir.display());
    key.add("origin", &src.origin);
    key.add("target", &target.triple);
    key.add("host", &target.host);
    key.add("build type", &build_type);
    key.add(
        "generator",
        generator
            .as_ref()
            .map_or("cmake's default", |(name, _)| name),
    );
    for (name, value) in &defines {
        key.add(&format!("-D{name}"), value);
    }
    key.add("extra C/C++ flags", extra_flags.join(" "));
    let c_version = add_compiler(&mut key, "C compiler", &c_compiler);
    let cxx_version = add_compiler(&mut key, "C++ compiler", &cxx_compiler);
    for name in compiler_env(target)
        .into_iter()
        .chain(["CUDA_PATH", "CUDA_HOME", "VULKAN_SDK"].map(String::from))
    {
        if let Some(value) = env::var_os(&name) {
            key.add(&format!("env {name}"), value.to_string_lossy());
        }
    }

    let entry = cache::Entry::lock(cache_root, "", &key).unwrap_or_else(|msg| fail(&msg));
    if src.immutable && entry.is_complete() {
        println!(
            "llama-cpp-moe-sys: reusing the llama.cpp build in {}",
            entry.dir.display()
        );
    } else {
        // Fail in a second, not after a stack trace from the cmake crate.
        for check in [
            tools::require_cmake(),
            c_version.map_err(|e| missing_compiler("C", &c_compiler, &e)),
            cxx_version.map_err(|e| missing_compiler("C++", &cxx_compiler, &e)),
        ] {
            if let Err(msg) = check {
                fail(&msg);
            }
        }
        entry.mark_incomplete();
        let mut config = cmake::Config::new(&src.dir);
        // The cmake crate would follow the cargo profile; a Debug C++ build is far too slow.
        config.profile(&build_type);
        config.out_dir(&entry.dir);
        if let Some((name, version)) = &generator {
            println!("llama-cpp-moe-sys: cmake generator {name} ({version})");
            config.generator(name);
        }
        for (name, value) in &defines {
            config.define(name, value);
        }
        if features.dynamic_backends {
            // Let ggml_backend_load_all() find the modules of this build without any setup.
            config.define("GGML_BACKEND_DIR", entry.dir.join("lib"));
        }
        for flag in extra_flags {
            config.cflag(flag);
            config.cxxflag(flag);
        }
        config.build();
        entry.mark_complete().unwrap_or_else(|msg| fail(&msg));
    }
    println!(
        "cargo:rustc-env=LLAMA_CPP_MOE_CMAKE_BUILD_DIR={}",
        entry.dir.join("build").display()
    );
    entry.dir.clone()
}

/// Ninja when `CMAKE_GENERATOR` is unset and `ninja` runs (not for Windows targets, where
/// cmake's default generator finds MSVC by itself): with Makefiles, cmake builds a target's
/// objects only after the targets it links are complete, which leaves cores idle at every
/// such step (ggml-base, ggml-cpu, ggml, llama); Ninja compiles objects of all targets
/// together. Ninja does not take tokens from cargo's jobserver, so it runs `NUM_JOBS`
/// (cargo's `-j`) compilers at once, as the cmake crate tells it. `CMAKE_GENERATOR="Unix
/// Makefiles"` keeps make (which does use the jobserver).
fn cmake_generator(target: &Target) -> Option<(String, String)> {
    if env::var_os("CMAKE_GENERATOR").is_some() || target.os == "windows" {
        return None;
    }
    let version = tools::version_line(Path::new("ninja")).ok()?;
    Some(("Ninja".to_owned(), format!("ninja {version}")))
}

fn missing_compiler(kind: &str, tool: &cc::Tool, error: &str) -> String {
    tools::missing_tool_message(
        &format!("the {kind} compiler `{}`", tool.path().display()),
        error,
    )
}

/// Links the shared libraries of `lib_dir` into `mirror` (hard links, or copies across
/// file systems; symlinks recreated) and returns `mirror`.
///
/// `cargo run` and `cargo test` put a dependency's link-search directories on the
/// run-time library path only when they lie in the profile's build output, as OUT_DIR
/// does and the shared cache does not; the rpath below reaches only this package's own
/// binaries. Without the mirror, the safe crate's tests could not find libllama.so.
fn mirror_shared_libraries(lib_dir: &Path, mirror: &Path) -> PathBuf {
    let io = |what: &str, path: &Path, e: std::io::Error| -> ! {
        fail(&format!("cannot {what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(mirror).unwrap_or_else(|e| io("create", mirror, e));
    let entries = std::fs::read_dir(lib_dir).unwrap_or_else(|e| io("read", lib_dir, e));
    for entry in entries.filter_map(Result::ok) {
        let from = entry.path();
        let name = entry.file_name();
        let shared = [".so", ".dylib", ".dll"]
            .iter()
            .any(|ext| name.to_string_lossy().contains(ext));
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !shared || kind.is_dir() {
            continue;
        }
        let to = mirror.join(&name);
        let _ = std::fs::remove_file(&to);
        if kind.is_symlink() {
            let target = std::fs::read_link(&from).unwrap_or_else(|e| io("read", &from, e));
            #[cfg(unix)]
            std::os::unix::fs::symlink(&target, &to).unwrap_or_else(|e| io("create", &to, e));
            #[cfg(not(unix))]
            std::fs::copy(lib_dir.join(&target), &to).unwrap_or_else(|e| io("copy", &to, e));
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap_or_else(|e| io("copy", &from, e));
        }
    }
    mirror.to_path_buf()
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

fn compile_shim(
    src: &source::Source,
    manifest_dir: &Path,
    cache_root: &Path,
    features: &Features,
    target: &Target,
) {
    let shim_dir = manifest_dir.join("shim");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(shim_dir.join("llama_moe_shim.cpp"))
        .include(&shim_dir)
        .include(src.dir.join("include"))
        .include(src.dir.join("ggml/include"))
        .include(src.dir.join("src"))
        .warnings(true)
        // Link lines are printed below, also when the cached library is reused.
        .cargo_metadata(false)
        // Release whatever the cargo profile: the shim sits in hot-ish paths (placement
        // walks), and one build then serves every profile.
        .opt_level(2)
        .debug(false);
    if features.dynamic_link {
        build.define("LLAMA_SHARED", None);
        build.define("GGML_SHARED", None);
    }
    let compiler = build.try_get_compiler().unwrap_or_else(|e| {
        fail(&tools::missing_tool_message(
            "a C++ compiler",
            &e.to_string(),
        ))
    });

    let mut key = cache::Key::new("llama_moe_shim v1");
    key.add("target", &target.triple);
    key.add("source", src.dir.display());
    key.add("shared", features.dynamic_link);
    let version = add_compiler(&mut key, "C++ compiler", &compiler);
    // The shim includes llama.cpp's internal headers, which LLAMA_CPP_SRC may change.
    let mut headers = cache::FNV_OFFSET;
    for dir in [
        src.dir.join("include"),
        src.dir.join("ggml/include"),
        src.dir.join("src"),
    ] {
        headers = cache::hash_files(headers, &dir, &[".h"]);
    }
    key.add("llama.cpp headers", format!("{headers:016x}"));
    key.add(
        "shim sources",
        format!(
            "{:016x}",
            cache::hash_files(cache::FNV_OFFSET, &shim_dir, &[".h", ".cpp"])
        ),
    );

    let entry = cache::Entry::lock(cache_root, "shim-", &key).unwrap_or_else(|msg| fail(&msg));
    if !entry.is_complete() {
        if let Err(e) = version {
            fail(&missing_compiler("C++", &compiler, &e));
        }
        entry.mark_incomplete();
        build.out_dir(&entry.dir);
        build
            .try_compile("llama_moe_shim")
            .unwrap_or_else(|e| fail(&format!("compiling the C++ shim failed: {e}")));
        entry.mark_complete().unwrap_or_else(|msg| fail(&msg));
    }
    println!("cargo:rustc-link-search=native={}", entry.dir.display());
    println!("cargo:rustc-link-lib=static=llama_moe_shim");
}

/// The bindings parts this feature set declares: backends linked in get their header.
fn bindings_parts(features: &Features) -> Vec<bindings::Part> {
    let linked_backends = !features.dynamic_backends;
    let mut parts = vec![bindings::BASE];
    for (on, part) in [
        (features.rpc, bindings::RPC),
        (features.cuda, bindings::CUDA),
        (features.vulkan, bindings::VULKAN),
    ] {
        if on && linked_backends {
            parts.push(part);
        }
    }
    parts
}

fn write_bindings(
    src: &Path,
    manifest_dir: &Path,
    out_dir: &Path,
    features: &Features,
    target: &Target,
) {
    let parts = bindings_parts(features);
    let inputs = bindings::input_hash(src, manifest_dir);
    println!("cargo:rerun-if-env-changed=LLAMA_CPP_MOE_REGENERATE_BINDINGS");
    let mut text = String::new();
    if let Some(dir) = env::var_os("LLAMA_CPP_MOE_REGENERATE_BINDINGS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
        for part in bindings::ALL {
            let generated = bindings::generate(part, src, manifest_dir, &inputs)
                .unwrap_or_else(|msg| fail(&msg));
            let path = dir.join(part.file);
            std::fs::write(&path, &generated)
                .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
            if parts.iter().any(|p| p.file == part.file) {
                text.push_str(&generated);
            }
        }
    } else {
        for part in parts {
            let checked_in = if target.uses_checked_in_bindings() {
                bindings::checked_in(manifest_dir, part, &inputs)
            } else {
                Err(format!(
                    "no checked-in bindings for target {}",
                    target.triple
                ))
            };
            match checked_in {
                Ok(t) => text.push_str(&t),
                Err(why) => {
                    println!(
                        "llama-cpp-moe-sys: running bindgen for {}: {why}",
                        part.file
                    );
                    text.push_str(
                        &bindings::generate(part, src, manifest_dir, &inputs)
                            .unwrap_or_else(|msg| fail(&msg)),
                    );
                }
            }
        }
    }
    std::fs::write(out_dir.join("bindings.rs"), text)
        .unwrap_or_else(|e| fail(&format!("cannot write bindings.rs: {e}")));
}

/// docs.rs builds offline, without cmake, and only needs declarations: the checked-in
/// bindings, and no library (rustdoc links nothing).
fn documentation_build(manifest_dir: &Path, out_dir: &Path, features: &Features) {
    let mut text = String::new();
    for part in bindings_parts(features) {
        text.push_str(
            &bindings::checked_in_unverified(manifest_dir, part).unwrap_or_else(|msg| fail(&msg)),
        );
    }
    std::fs::write(out_dir.join("bindings.rs"), text)
        .unwrap_or_else(|e| fail(&format!("cannot write bindings.rs: {e}")));
    let version = format!(
        "documentation build (DOCS_RS) of llama-cpp-moe-sys {}: llama.cpp was not compiled",
        env!("CARGO_PKG_VERSION")
    );
    write_version_constants(out_dir, &version, "", "");
}

fn write_version(src: &source::Source, out_dir: &Path, install_dir: &Path) {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let llama = source::cmake_version(&read(&src.dir.join("CMakeLists.txt")), "LLAMA");
    let ggml = source::cmake_version(&read(&src.dir.join("ggml/CMakeLists.txt")), "GGML");
    let version = format!("llama {llama}-dev, ggml {ggml}, source: {}", src.origin);
    write_version_constants(
        out_dir,
        &version,
        &src.dir.display().to_string(),
        &install_dir.display().to_string(),
    );
}

fn write_version_constants(out_dir: &Path, version: &str, source_dir: &str, install_dir: &str) {
    let code = format!(
        "/// The llama.cpp this crate was built from: llama and ggml versions and where the source came from.\n\
         pub const LLAMA_CPP_VERSION: &str = {version:?};\n\
         /// The llama.cpp source directory used by the build (headers live under it).\n\
         pub const LLAMA_CPP_SOURCE_DIR: &str = {source_dir:?};\n\
         /// The install prefix holding the built llama.cpp libraries (`lib/`): a directory of\n\
         /// the shared C++ build cache `<target-dir>/llama-cpp-cache/`, or `LLAMA_CPP_PREBUILT_DIR`.\n\
         pub const LLAMA_CPP_INSTALL_DIR: &str = {install_dir:?};\n",
    );
    std::fs::write(out_dir.join("version.rs"), code)
        .unwrap_or_else(|e| fail(&format!("cannot write version.rs: {e}")));
}
