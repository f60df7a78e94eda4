//! libFuzzer target `ndp`: see `bodies/ndp.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::ndp::run(data));
