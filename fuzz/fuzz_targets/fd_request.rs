//! fd.sock message decoding and validation (`gpushare_server::fd_server::parse_request`): any
//! bytes either parse into a well-formed request or are refused with INVALID_ARGUMENT; nothing
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match gpushare_server::fd_server::parse_request(data) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}"),
    }
});
