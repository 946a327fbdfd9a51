//! Published items, their manifests on disk, and the cache's eviction.

use std::time::{Duration, SystemTime};

use super::*;

fn keys(dir: &Path) -> AgentKeys {
    AgentKeys::load_or_create(dir).expect("agent keys")
}

#[tokio::test]
async fn a_published_item_is_signed_by_the_root_key_and_a_new_version_replaces_the_old() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let keys = keys(dir.path());
    let file = dir.path().join("sigs.bin");
    std::fs::write(&file, b"first signatures").expect("write");
    let first = publish(dir.path(), &keys, "av-sigs", ContentKind::Signatures, &file).expect("published");
    assert_eq!(first.size, 16);
    assert_eq!(first.sha256, <[u8; 32]>::from(Sha256::digest(b"first signatures")));

    let content = Content::origin(dir.path(), &keys);
    let item = content.item("av-sigs").await.expect("the item");
    assert_eq!(item.manifest, first);
    assert_eq!(verify_manifest(&keys.signing_public(), &item.signed), Ok(first.clone()));
    assert_eq!(std::fs::read(&item.path).expect("read"), b"first signatures");
    // Another key (a rogue root) does not verify it.
    let other = tempfile::tempdir().expect("a temp dir");
    assert!(verify_manifest(&AgentKeys::load_or_create(other.path()).expect("keys").signing_public(), &item.signed)
        .is_err());

    std::fs::write(&file, b"second, longer signatures").expect("write");
    let second = publish(dir.path(), &keys, "av-sigs", ContentKind::Signatures, &file).expect("published");
    assert!(second.published_at > first.published_at);
    let item = content.item("av-sigs").await.expect("the item");
    assert_eq!(item.manifest, second);
    assert!(!content.data_path(&first).exists(), "the old version's bytes are gone");
    assert_eq!(content.list().expect("list").len(), 1);

    assert!(matches!(content.item("nothing").await, Err(ContentError::NotFound(_))));
    assert!(matches!(content.item("../etc/passwd").await, Err(ContentError::BadName(_))));
    assert!(publish(dir.path(), &keys, "Bad Name", ContentKind::Script, &file).is_err());
}

#[tokio::test]
async fn a_manifest_altered_on_disk_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let keys = keys(dir.path());
    let file = dir.path().join("fix.sh");
    std::fs::write(&file, b"echo fixed\n").expect("write");
    publish(dir.path(), &keys, "fix.sh", ContentKind::Script, &file).expect("published");
    let content = Content::origin(dir.path(), &keys);
    let path = content.manifest_path("fix.sh");
    let mut kept: SignedManifest = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let mut payload = hex::decode(&kept.payload).expect("hex");
    let last = payload.len() - 1;
    payload[last] ^= 1; // another SHA-256
    kept.payload = hex::encode(payload);
    std::fs::write(&path, serde_json::to_string(&kept).expect("json")).expect("write");
    match content.item("fix.sh").await {
        Err(ContentError::Refused { reason, .. }) => assert!(reason.contains("not signed"), "{reason}"),
        other => panic!("an altered manifest was taken: {other:?}"),
    }
}

#[test]
fn the_cache_evicts_the_items_used_least_recently_and_never_the_one_filling() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let content = Content::new(dir.path().to_path_buf(), [0; 32], Source::Origin, 100, Duration::MAX);
    let old = SystemTime::now() - Duration::from_secs(3600);
    for (name, age) in [("a", 3), ("b", 1), ("c", 2)] {
        let path = dir.path().join(format!("{name}.00.data"));
        std::fs::write(&path, [0u8; 30]).expect("write");
        let file = std::fs::File::options().append(true).open(&path).expect("open");
        file.set_modified(old + Duration::from_secs(age)).expect("mtime");
    }
    std::fs::write(dir.path().join("d.00.part"), [0u8; 5]).expect("write");
    touch(&dir.path().join("c.00.data")); // c was just served
                                          // 95 bytes held; 40 more need 35 freed: b (oldest of a, b) goes, then a.
    content.make_room(40, "d").expect("room");
    let left: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(left, ["c.00.data", "d.00.part"]);
    // What cannot fit even alone is refused, and the part being filled is never evicted.
    assert!(matches!(content.make_room(200, "d"), Err(ContentError::TooLarge { .. })));
    assert!(dir.path().join("d.00.part").exists());
}
