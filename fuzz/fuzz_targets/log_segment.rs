#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kxgw::fuzzing::log_segment(data));
