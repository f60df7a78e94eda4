//! libFuzzer target `rx_batch`: see `bodies/rx_batch.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::rx_batch::run(data));
