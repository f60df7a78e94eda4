//! libFuzzer target `allocate`: see `bodies/allocate.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::allocate::run(data));
