//! Placeholder until the synthetic model factory lands.
fn main() {
    eprintln!("gguf_synth: not implemented yet");
    std::process::exit(2);
}
