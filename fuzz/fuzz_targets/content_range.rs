//! Fuzz target: the byte-range headers, `Content-Range` of an upload chunk and `Range` of a
//! blob read.
//!
//! The first 8 bytes are the blob's size for `Range`, the rest the header value. What
//! `Content-Range` accepts must print back to a value it reads the same; what `Range` answers
//! must lie inside the blob, or a read would run past its end.

#![no_main]

use ipcr_node::api::blobs::{RangeAsk, range_ask};
use ipcr_node::api::body::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (size, value) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => (0, data),
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    if let Some((start, end)) = parse_content_range(value) {
        assert_eq!(parse_content_range(&format!("{start}-{end}")), Some((start, end)));
    }
    if let RangeAsk::Part(start, end) = range_ask(Some(value), size) {
        assert!(start <= end && end < size, "{value:?} of {size}: {start}-{end}");
    }
});
