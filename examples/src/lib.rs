//! Examples live under `examples/`; this crate exists to host them.
