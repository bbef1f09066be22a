//! Guards the GCC < 13 AMX workaround (see build/flags.rs): a regression makes every
//! quantised matmul crash on AMX-capable Xeons, so check the real compile commands.

#[path = "../build/flags.rs"]
#[allow(dead_code)]
mod flags;

#[test]
fn decision_table() {
    assert_eq!(
        flags::amx_workaround_flags(Some(12), true, "x86_64"),
        ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
    );
    assert!(flags::amx_workaround_flags(Some(13), true, "x86_64").is_empty());
    assert!(flags::amx_workaround_flags(Some(12), false, "x86_64").is_empty());
    assert!(flags::amx_workaround_flags(Some(12), true, "aarch64").is_empty());
    assert!(flags::amx_workaround_flags(None, true, "x86_64").is_empty());
}

#[test]
fn vulkan_header_version_parses() {
    let header = "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)\n#define VK_HEADER_VERSION 239\n";
    assert_eq!(flags::parse_vk_header_version(header), Some(239));
}

/// Reads the compile commands cmake recorded for ggml-cpu and, when they use
/// -march=native with GCC < 13 on x86_64, requires the -mno-amx flags.
#[test]
fn native_gcc12_builds_disable_amx() {
    let Some(build_dir) = option_env!("LLAMA_CPP_MOE_CMAKE_BUILD_DIR") else {
        eprintln!("prebuilt llama.cpp: no compile commands to inspect");
        return;
    };
    let commands = std::fs::read_to_string(format!("{build_dir}/compile_commands.json"))
        .expect("cmake exports compile_commands.json");
    let cpu_cmd = commands
        .lines()
        .find(|l| l.contains("\"command\"") && l.contains("ggml-cpu.c.o"))
        .expect("a compile command for ggml-cpu.c");
    if !cpu_cmd.contains("-march=native") || !cfg!(target_arch = "x86_64") {
        return;
    }
    let compiler = cpu_cmd
        .split("\"command\": \"")
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .expect("compiler path");
    if let Some(major) = flags::gcc_major_version(std::path::Path::new(compiler)) {
        if major < 13 {
            for flag in ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"] {
                assert!(
                    cpu_cmd.contains(flag),
                    "GCC {major} native build lacks {flag}: {cpu_cmd}"
                );
            }
        }
    }
}
