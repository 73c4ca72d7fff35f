//! The local control socket's request parsing: a line read with its limit
//! (`control::read_line_limited`), split into words, and every operator
//! request parsed (`run::service_request`). Never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let line = rt.block_on(baton_agent::control::socket::read_line_limited(data, baton_agent::control::socket::MAX_REQUEST_LINE));
    let Ok(Some(line)) = line else { return };
    let mut words = line.split_whitespace();
    let Some(op) = words.next() else { return };
    let rest: Vec<&str> = words.collect();
    let _ = baton_agent::daemon::run::service_request(op, &rest);
    let _ = baton_agent::control::socket::reason_code(op);
});
