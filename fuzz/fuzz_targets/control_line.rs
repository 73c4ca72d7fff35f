//! The local control socket's request parsing: a line read with its limit
//! (`control::read_line_limited`) and parsed (`protocol::Request::parse`);
//! a request that parses encodes back to a line that parses to itself.
//! Never panics.
#![no_main]
use baton_agent::control::protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let line = rt.block_on(baton_agent::control::socket::read_line_limited(data, baton_agent::control::socket::MAX_REQUEST_LINE));
    let Ok(Some(line)) = line else { return };
    let Ok(req) = Request::parse(&line) else { return };
    let again = req.encode().expect("a parsed request encodes");
    assert_eq!(Request::parse(&again).as_ref(), Ok(&req), "{line:?} -> {again:?}");
});
