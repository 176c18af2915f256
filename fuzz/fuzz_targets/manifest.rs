//! Fuzz target: manifest validation, `parse_manifest(content_type, body)`, which reads every
//! pushed manifest before the registry stores it.
//!
//! The first byte picks the request's Content-Type, the rest is the body. Whatever is accepted
//! must be something the registry can store and serve: a media type it serves, and sorted,
//! unique lists of the blobs and children it references.

#![no_main]

use ipcr_proto::manifest::parse_manifest;
use ipcr_proto::media;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_MANIFEST_LIST),
    Some(media::DOCKER_SCHEMA1_SIGNED),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some("application/json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&ct, body)) = data.split_first() else {
        return;
    };
    let ct = CONTENT_TYPES[usize::from(ct) % CONTENT_TYPES.len()];
    if let Ok(info) = parse_manifest(ct, body) {
        assert!(
            media::MANIFEST_TYPES.contains(&info.media_type.as_str()),
            "{}",
            info.media_type
        );
        assert!(info.blobs.windows(2).all(|w| w[0] < w[1]));
        assert!(info.children.windows(2).all(|w| w[0] < w[1]));
        assert!(info.blobs.is_empty() || info.children.is_empty());
        assert_eq!(
            media::is_index(&info.media_type),
            !info.children.is_empty() || info.blobs.is_empty()
        );
    }
});
