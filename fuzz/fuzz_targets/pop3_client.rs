#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postoffice_fuzz::pop3_client(data));
