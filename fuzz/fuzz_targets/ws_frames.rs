#![no_main]
//! See klines_fuzz::ws_frames.
libfuzzer_sys::fuzz_target!(|data: &[u8]| klines_fuzz::ws_frames(data));
