//! isopod's HTTP/1.1 head reader on arbitrary bytes: it must never panic,
//! and a head it serves itself must be one hyper reads the same way
//! (`isopod_server::fuzzing::check_request_head`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    isopod_server::fuzzing::check_request_head(input);
});
