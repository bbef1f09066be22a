//! llama.cpp's command line for programs built on [`llama_cpp_moe`]: the flags that
//! load and place a (MoE) model, spelled as llama.cpp spells them, and the set-up they
//! describe. `simple_moe` (an example), `moe_server` and the benchmark programs of the
//! llama-cpp-moe workspace parse with it, so one flag means one thing in all of them.
//!
//! - The crate root: [`parse`], which is clap plus llama.cpp's single-dash multi-letter
//!   spellings (`-ngl`, `-ub`, `-ot`): clap has no multi-letter short flags, so each
//!   program lists its spellings as `(spelling, long flag)` pairs, which [`parse`]
//!   rewrites to the long flag before clap sees the command line and lists under the
//!   program's `--help`. Also [`init_logging`], and the value types [`GpuLayers`] and
//!   [`LayerList`].
//! - [`args`]: the flag groups (model, context, placement, planner, generation, output).
//! - [`model_setup`]: what the flags describe: the backend with its RPC servers, the
//!   model file (or a cached synthetic one), model and context parameters, and the
//!   placement report printed after loading.
//! - [`testing`]: for the tests of programs that parse with this crate.
//!
//! Exit codes are the same everywhere: `--help` prints the help and exits 0; a bad flag
//! or value prints one line, `PROGRAM: what is wrong (see --help)`, and exits 2.

pub mod args;
pub mod model_setup;
mod parse;
pub mod testing;

pub use parse::{
    expand_spellings, init_logging, one_line, parse, try_parse_from, usage_error, GpuLayers,
    LayerList, Spellings,
};
