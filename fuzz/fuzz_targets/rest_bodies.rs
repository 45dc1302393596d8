#![no_main]
//! See klines::fuzzing::rest_bodies.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines::fuzzing::rest_bodies(data));
