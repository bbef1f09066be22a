//! `Model::load` hands llama.cpp a `llama_model_params` whose pointers (the tensor
//! override array, the kv override array, the device list, the progress callback's
//! `user_data`) live only for the call. llama.cpp does not copy them: `llama_model`
//! keeps the whole struct by value (`llama_model_params params;` in src/llama-model.h),
//! so once the load returns the model holds dangling pointers. That is sound only
//! because the pinned llama.cpp reads them while loading and never after.
//!
//! These tests scan the pinned source for every read of those fields and fail when one
//! appears outside the load path, so a pin bump that starts reading one later (a
//! use-after-free through `Model`) stops here instead of shipping.

use std::path::{Path, PathBuf};

use llama_cpp_moe::sys::LLAMA_CPP_SOURCE_DIR;

/// The `llama_model_params` fields that point at memory `Model::load` owns only for the
/// call. (`tensor_split` is not among them: `llama_model`'s constructor copies it.)
const BORROWED_FIELDS: [&str; 5] = [
    "tensor_buft_overrides",
    "kv_overrides",
    "devices",
    "progress_callback",
    "progress_callback_user_data",
];

/// The functions allowed to read them, each with why that is during the load.
const LOAD_PATH: [(&str, &str); 6] = [
    (
        "llama_model_load_from_file_impl",
        "the entry point; installs its own progress callback when none is given",
    ),
    (
        "llama_model_load",
        "hands both override arrays to the loader, which lives only for the load",
    ),
    (
        "llama_prepare_model_devices",
        "copies the device list into llama_model::devices",
    ),
    (
        "llama_model::llama_model",
        "the constructor, run by llama_model_create inside llama_model_load",
    ),
    (
        "llama_model_base::load_tensors",
        "reports progress while reading the weights",
    ),
    (
        "llama_model_quantize_impl",
        "reads llama_model_quantize_params::kv_overrides, another struct",
    ),
];

/// A read of a borrowed field: file, line, field, enclosing function.
#[derive(Debug, PartialEq)]
struct Use {
    file: String,
    line: usize,
    field: String,
    function: String,
}

/// Every `params.FIELD` / `params->FIELD` read of a borrowed field in `source`, with the
/// function it is in (llama.cpp starts function definitions at column 0).
fn borrowed_field_uses(file: &str, source: &str) -> Vec<Use> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for access in ["params.", "params->"] {
            for (at, _) in code.match_indices(access) {
                let rest = &code[at + access.len()..];
                let field: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if BORROWED_FIELDS.contains(&field.as_str()) {
                    found.push(Use {
                        file: file.to_owned(),
                        line: i + 1,
                        field,
                        function: enclosing_function(&lines[..=i]),
                    });
                }
            }
        }
    }
    found
}

/// The name of the function whose definition starts on the last column-0 line with a
/// `(` (`"llama_model::llama_model"`, `"llama_prepare_model_devices"`), or `"?"`.
fn enclosing_function(lines: &[&str]) -> String {
    lines
        .iter()
        .rev()
        .find(|l| {
            l.starts_with(|c: char| !c.is_whitespace() && !"}#/".contains(c)) && l.contains('(')
        })
        .and_then(|l| {
            let head = &l[..l.find('(')?];
            let name = head
                .rsplit(|c: char| c.is_whitespace() || c == '*' || c == '&')
                .next()?;
            (!name.is_empty()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "cpp" || e == "h" || e == "c")
        {
            out.push(path);
        }
    }
}

#[test]
fn the_pinned_llama_cpp_reads_the_borrowed_model_params_only_while_loading() {
    let src = Path::new(LLAMA_CPP_SOURCE_DIR).join("src");
    let header = std::fs::read_to_string(src.join("llama-model.h")).expect("llama-model.h");
    assert!(
        header.contains("llama_model_params params;"),
        "llama_model no longer keeps its params by value: review Model::load's SAFETY \
         comment and this test"
    );
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses = Vec::new();
    for path in &files {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        let name = path.strip_prefix(&src).unwrap().display().to_string();
        uses.extend(borrowed_field_uses(&name, &text));
    }
    let outside: Vec<&Use> = uses
        .iter()
        .filter(|u| !LOAD_PATH.iter().any(|(f, _)| *f == u.function))
        .collect();
    assert!(
        outside.is_empty(),
        "llama.cpp reads llama_model_params pointers outside the load path; Model::load's \
         pointers dangle after the load, so this may be a use-after-free: {outside:#?}"
    );
    // The scan must see the reads it allows, or a rename would leave it checking nothing.
    for field in BORROWED_FIELDS {
        assert!(
            uses.iter().any(|u| u.field == field),
            "no read of params.{field} found in {}: the scan no longer sees it",
            src.display()
        );
    }
    for (function, why) in LOAD_PATH {
        assert!(
            uses.iter().any(|u| u.function == function),
            "{function} ({why}) no longer reads a borrowed field: update LOAD_PATH"
        );
    }
}

#[test]
fn the_scan_finds_a_read_after_the_load() {
    let source = "\
size_t llama_model::n_devices() const {
    return devices.size();
}

const char * llama_model::first_override() const {
    // params.devices in a comment does not count
    return params.tensor_buft_overrides ? params.tensor_buft_overrides[0].pattern : nullptr;
}

static bool llama_prepare_model_devices(const llama_model_params & params,
        llama_model * model) {
    for (ggml_backend_dev_t * dev = params.devices; *dev; ++dev) {
";
    let uses = borrowed_field_uses("x.cpp", source);
    let at: Vec<(usize, &str, &str)> = uses
        .iter()
        .map(|u| (u.line, u.field.as_str(), u.function.as_str()))
        .collect();
    assert_eq!(
        at,
        [
            (7, "tensor_buft_overrides", "llama_model::first_override"),
            (7, "tensor_buft_overrides", "llama_model::first_override"),
            (12, "devices", "llama_prepare_model_devices"),
        ]
    );
}

/// The pinned `llama-model.cpp` with one read after the load, as a pin bump could bring:
/// the scan names the function.
#[test]
fn a_drifted_llama_model_cpp_is_caught() {
    let path = Path::new(LLAMA_CPP_SOURCE_DIR).join("src/llama-model.cpp");
    let source = std::fs::read_to_string(&path).expect("llama-model.cpp");
    let getter = "    return params.tensor_split;";
    assert!(
        source.contains(getter),
        "{getter:?} is gone; pick another getter"
    );
    let drifted = source.replace(
        getter,
        "    return params.devices ? params.tensor_split : nullptr;",
    );
    let outside: Vec<Use> = borrowed_field_uses("llama-model.cpp", &drifted)
        .into_iter()
        .filter(|u| !LOAD_PATH.iter().any(|(f, _)| *f == u.function))
        .collect();
    assert_eq!(outside.len(), 1, "{outside:#?}");
    assert_eq!(
        (outside[0].field.as_str(), outside[0].function.as_str()),
        ("devices", "llama_model::tensor_split")
    );
}
