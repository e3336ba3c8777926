#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kxgw::fuzzing::fetch_datagrams(data));
