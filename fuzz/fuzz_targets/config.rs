#![no_main]
//! See klines_fuzz::config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines_fuzz::config(data));
