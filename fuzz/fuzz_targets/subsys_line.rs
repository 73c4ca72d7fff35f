//! The subsystem socket's request parser (`subsys::parse_request`) on any
//! line. Never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = baton_agent::control::subsys::parse_request(data);
});
