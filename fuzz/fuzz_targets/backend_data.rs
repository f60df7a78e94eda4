//! libFuzzer target `backend_data`: see `bodies/backend_data.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::backend_data::run(data));
