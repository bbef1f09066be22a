//! docs/migrating-from-llama-cpp-2.md shows the `migrate_from_llama_cpp_2` example as
//! the compiled, CI-run spelling of its program: the text there must be that file.

use std::path::Path;

const BEGIN: &str = "<!-- migrate_from_llama_cpp_2 begin -->\n```rust\n";
const END: &str = "```\n<!-- migrate_from_llama_cpp_2 end -->";

#[test]
fn guide_shows_the_compiled_example_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../docs/migrating-from-llama-cpp-2.md"))
        .expect("read the migration guide");
    let example = std::fs::read_to_string(root.join("migrate_from_llama_cpp_2/main.rs"))
        .expect("read the example");
    let start = guide
        .find(BEGIN)
        .expect("the guide marks where the example begins")
        + BEGIN.len();
    let len = guide[start..]
        .find(END)
        .expect("the guide marks where the example ends");
    let shown = &guide[start..start + len];
    if shown != example {
        let line = shown
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the length".to_owned(), |i| format!("line {}", i + 1));
        panic!(
            "docs/migrating-from-llama-cpp-2.md shows a different migrate_from_llama_cpp_2/main.rs \
             (first difference at {line}): copy the example into the guide"
        );
    }
}
