//! libFuzzer target `subnet_env`: see `bodies/subnet_env.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::subnet_env::run(data));
