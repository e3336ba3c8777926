#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kxgw_testkit::fuzzing::kafka_request(data));
