//! `moe_server`: an OpenAI-compatible HTTP server on llama-cpp-moe.
//!
//! - `POST /v1/chat/completions` (through the model's chat template) and
//!   `POST /v1/completions`, streamed with Server-Sent Events or answered whole, with the
//!   real token counts in `usage`;
//! - `GET /v1/models`, and `GET /health`, which says `ok` only once the model is loaded
//!   and while the decoding worker runs (503 before, and after it died);
//! - `POST /v1/embeddings` (`--embedding`), `GET /metrics` (`--metrics`), and
//!   llama-server's `POST /tokenize` and `POST /detokenize`.
//!
//! Every request field OpenAI's two APIs define is honoured or refused with a 400 naming
//! it ([`api`]); `n` choices share the prompt's KV cells ([`engine`]). With `--api-key`
//! every endpoint but `/health` needs a key; CORS is off unless `--cors-origins`.
//!
//! Concurrency: one worker thread owns the llama.cpp context and decodes up to
//! `--parallel` requests together, one sequence each, in one batch per step
//! ([`engine`]). Requests beyond that wait in a bounded queue; when it is full the
//! answer is 503 with `Retry-After`. A client that disconnects frees its sequence. A
//! failed decode fails only the request(s) that caused it; the others go on.
//!
//! The model flags are `simple_moe`'s ([`llama_cpp_moe_cli::args`]), and
//! so is the placement report printed at startup.

pub mod api;
pub mod app;
pub mod engine;
pub mod grammar;
pub mod http;
pub mod template;
