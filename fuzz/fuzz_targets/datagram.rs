//! The heartbeat/distress datagram decoder (`baton_common::wire::Header::decode`)
//! on any bytes, with a fixed key and receiver: never panics; whatever
//! decodes re-encodes (as a one-entry datagram) to the same MAC block.
#![no_main]
use baton_common::wire::Header;
use libfuzzer_sys::fuzz_target;

const K0: u64 = 0x0706_0504_0302_0100;
const K1: u64 = 0x0f0e_0d0c_0b0a_0908;
const ME: u32 = 1;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data, ME, K0, K1) {
        let again = h.encode(K0, K1);
        assert_eq!(Header::decode(&again, ME, K0, K1).map(|h2| h2.covered_bytes()), Ok(h.covered_bytes()));
    }
});
