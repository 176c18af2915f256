//! The state machine's side of the pull-through cache: manifests stored before their blobs,
//! and one fetch claim per blob across the cluster.

use ipcr_proto::{Algorithm, Command, CommandResult, ManifestRecord, Reject, media};

use super::testing::db;

fn claim(digest: &ipcr_proto::Digest, node: u64, now_ms: u64) -> Command {
    Command::ClaimFetch {
        digest: digest.clone(),
        node,
        now_ms,
        lease_ms: 1_000,
    }
}

#[test]
fn one_node_fetches_a_blob_until_its_claim_ends() {
    let db = db();
    let blob = Algorithm::Sha256.digest_bytes(b"layer");
    db.ok(claim(&blob, 1, 0));
    // Renewed by its holder, refused to anyone else while it runs.
    db.ok(claim(&blob, 1, 500));
    assert_eq!(
        db.apply(claim(&blob, 2, 1_000)),
        CommandResult::Rejected(Reject::FetchClaimed {
            node: 1,
            until_ms: 1_500
        })
    );
    assert_eq!(db.reader().fetch_claim(&blob).unwrap(), Some((1, 1_500)));
    // Run out: another node takes over.
    db.ok(claim(&blob, 2, 1_501));
    // A release by a node that does not hold it changes nothing; by the holder it ends it.
    db.ok(Command::ReleaseFetch {
        digest: blob.clone(),
        node: 1,
    });
    assert!(matches!(
        db.apply(claim(&blob, 3, 1_600)),
        CommandResult::Rejected(_)
    ));
    db.ok(Command::ReleaseFetch {
        digest: blob.clone(),
        node: 2,
    });
    db.ok(claim(&blob, 3, 1_600));
    // The commit of the blob ends the claim.
    db.commit("proxied/app", b"layer", 1_700);
    assert_eq!(db.reader().fetch_claim(&blob).unwrap(), None);
    db.ok(claim(&blob, 4, 1_800));
}

#[test]
fn a_cached_manifest_is_stored_before_its_blobs() {
    let db = db();
    let layer = Algorithm::Sha256.digest_bytes(b"not here yet");
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"c","digest":"{layer}","size":12}},"layers":[]}}"#,
        media::OCI_MANIFEST
    );
    let digest = Algorithm::Sha256.digest_bytes(bytes.as_bytes());
    let record = ManifestRecord {
        media_type: media::OCI_MANIFEST.into(),
        bytes: bytes.into_bytes(),
        blobs: vec![layer.clone()],
        children: vec![],
        subject: None,
        artifact_type: None,
        annotations: Default::default(),
    };
    let repo: ipcr_proto::RepoName = "hub/library/alpine".parse().unwrap();
    let push = Command::PutManifest {
        repo: repo.clone(),
        digest: digest.clone(),
        tags: vec!["3".parse().unwrap()],
        record: record.clone(),
        now_ms: 0,
    };
    assert_eq!(
        db.apply(push),
        CommandResult::Rejected(Reject::ManifestBlobUnknown(layer))
    );
    db.ok(Command::CacheManifest {
        repo: repo.clone(),
        digest: digest.clone(),
        tags: vec!["3".parse().unwrap()],
        record,
        now_ms: 0,
    });
    let (found, _) = db.reader().tagged_manifest(&repo, "3").unwrap().unwrap();
    assert_eq!(found, digest);
}
