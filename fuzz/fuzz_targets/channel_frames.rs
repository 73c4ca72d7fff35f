//! The control channel after decryption: a stream of length-prefixed frames
//! (as `read_frame` splits them), each fed to the reassembly and decoder of
//! a session (`Reassembly::push`) and to the hello decoder. Never panics,
//! never grows past MAX_MSG_LEN.
#![no_main]
use baton_agent::control::channel::{decode_hello_plain, split_frames, Reassembly, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (frames, _) = split_frames(data, MAX_FRAME_LEN);
    let mut r = Reassembly::default();
    for f in frames {
        let _ = decode_hello_plain(f);
        if r.push(f).is_err() {
            break; // the connection would be closed
        }
    }
});
