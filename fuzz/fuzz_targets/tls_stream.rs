#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kxgw_testkit::fuzzing_tls::tls_stream(data));
