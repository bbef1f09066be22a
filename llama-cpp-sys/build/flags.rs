//! Compiler-flag decisions, kept free of cargo I/O so tests can `include!` them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags that keep `-march=native` from enabling AMX where GCC miscompiles it.
///
/// GCC before 13 declares an 8-byte operand for `_tile_loadconfig`'s 64-byte tile
/// configuration, so the stores that fill it are dropped and ggml's first AMX matmul
/// crashes (SIGSEGV/SIGILL) on AMX-capable Xeons. An explicit `-mno-*` wins over the
/// `-march` default whatever the order on the command line, so these can sit in
/// CMAKE_C_FLAGS while ggml appends `-march=native` later; every other native
/// extension stays on.
pub fn amx_workaround_flags(
    gcc_major: Option<u32>,
    native: bool,
    target_arch: &str,
) -> &'static [&'static str] {
    match gcc_major {
        Some(major) if native && major < 13 && target_arch == "x86_64" => {
            &["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
        }
        _ => &[],
    }
}

/// The major version of `compiler` when it is GCC (not clang posing as gcc), else None.
pub fn gcc_major_version(compiler: &Path) -> Option<u32> {
    let run = |arg: &str| {
        Command::new(compiler)
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if run("--version")?.to_lowercase().contains("clang") {
        return None;
    }
    run("-dumpversion")?.trim().split('.').next()?.parse().ok()
}

/// The oldest Vulkan header version whose C++ bindings have what ggml-vulkan uses
/// (`vk::LayerSettingEXT`, from VK_EXT_layer_settings).
pub const MIN_VULKAN_HEADER_VERSION: u32 = 275;

/// Fails fast, before cmake, when the Vulkan headers or glslc are missing or too old.
pub fn check_vulkan_headers(sdk: Option<PathBuf>) -> Result<(), String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(sdk) = &sdk {
        candidates.push(sdk.join("include/vulkan/vulkan_core.h"));
    }
    candidates.push(PathBuf::from("/usr/include/vulkan/vulkan_core.h"));
    candidates.push(PathBuf::from("/usr/local/include/vulkan/vulkan_core.h"));
    let need = format!(
        "feature `vulkan` needs the Vulkan SDK 1.3.{MIN_VULKAN_HEADER_VERSION} or newer \
         (headers with vk::LayerSettingEXT) plus glslc; set VULKAN_SDK to its root"
    );
    let header = candidates
        .iter()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{need}: no vulkan/vulkan_core.h was found"))?;
    let text = std::fs::read_to_string(header).map_err(|e| format!("{need}: {e}"))?;
    let version = parse_vk_header_version(&text)
        .ok_or_else(|| format!("{need}: no VK_HEADER_VERSION in {}", header.display()))?;
    if version < MIN_VULKAN_HEADER_VERSION {
        return Err(format!(
            "{need}: {} declares VK_HEADER_VERSION {version}",
            header.display()
        ));
    }
    let glslc = sdk
        .map(|s| s.join("bin/glslc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("glslc"));
    if Command::new(&glslc).arg("--version").output().is_err() {
        return Err(format!("{need}: glslc was not found"));
    }
    Ok(())
}

/// Reads `#define VK_HEADER_VERSION 239` from vulkan_core.h.
pub fn parse_vk_header_version(header: &str) -> Option<u32> {
    header.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define VK_HEADER_VERSION ")?;
        rest.trim().parse().ok()
    })
}
