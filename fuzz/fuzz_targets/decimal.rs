#![no_main]
//! See klines_fuzz::decimal.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines_fuzz::decimal(data));
