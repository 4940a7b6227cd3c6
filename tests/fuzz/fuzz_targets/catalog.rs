#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tongban_fuzz_support::catalog(data));
