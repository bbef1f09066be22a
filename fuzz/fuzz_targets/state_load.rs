//! libFuzzer entry point; the check itself is `llama_cpp_moe_fuzz::check_state_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llama_cpp_moe_fuzz::check_state_load(data));
