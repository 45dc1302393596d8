#![no_main]
//! See klines::fuzzing::config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines::fuzzing::config(data));
