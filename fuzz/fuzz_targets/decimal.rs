#![no_main]
//! See klines::fuzzing::decimal.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines::fuzzing::decimal(data));
