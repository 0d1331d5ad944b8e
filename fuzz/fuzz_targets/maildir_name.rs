#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postoffice_fuzz::maildir_name(data));
