#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postoffice_fuzz::body_roundtrip(data));
