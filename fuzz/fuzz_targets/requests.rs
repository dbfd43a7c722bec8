//! Request validation that runs before any lookup or GPU work (`gpushare_server::fuzzing::
//! request_fields`): gRPC messages decoded from any bytes, then the checks the handlers apply
//! to their fields (ranges, names, ids, image shapes, regions, clear colors and mip ranges,
//! device selectors, configuration text). Nothing may panic, and every refusal is
//! INVALID_ARGUMENT, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gpushare_server::fuzzing::request_fields(data);
});
