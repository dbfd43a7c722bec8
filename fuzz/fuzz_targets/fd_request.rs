//! fd.sock message decoding and validation (`gpushare_server::fuzzing::fd_request`): any bytes
//! either parse into a well-formed request or are refused with INVALID_ARGUMENT; nothing
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gpushare_server::fuzzing::fd_request(data);
});
