#![no_main]
//! See klines_fuzz::rest_bodies.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines_fuzz::rest_bodies(data));
