#![no_main]
//! See klines::fuzzing::ws_frames.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines::fuzzing::ws_frames(data));
