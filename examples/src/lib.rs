//! Shared code of the runnable examples (kept in a library so its unit tests run under
//! `cargo test`).

pub mod simple_moe_args;
