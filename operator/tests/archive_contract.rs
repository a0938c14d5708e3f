//! The operator reads the server's archive answers with its own types: the
//! server's `BackupList` and `Base`, as the server serializes them, must
//! read back as the operator's `ArchiveListing` and `ArchivedBase` with the
//! same values, on the master (with the archiver's progress) and elsewhere.

use phxkv::api::service::BackupList;
use phxkv::archive::{Base, Point, Recoverable};
use phxkv_operator::members::{ArchiveListing, ArchivedBase};

fn base() -> Base {
    Base::parse(&Base::object_name(120, 77, 1_764_500_000_123), 4096).expect("a base name")
}

fn list(on_master: bool) -> BackupList {
    let recoverable = Recoverable {
        first: Point {
            revision: 77,
            index: 120,
            time: 1_764_500_000,
        },
        last: Point {
            revision: 90,
            index: 140,
            time: 1_764_500_100,
        },
    };
    BackupList {
        archive_url: "s3://b/p/ns/kv".into(),
        backups: vec![base()],
        recoverable: Some(recoverable),
        recoverable_ranges: vec![recoverable],
        archived_index: on_master.then_some(140),
        archive_lag: on_master.then_some(3),
        archive_error: on_master.then(|| "PUT wal/...: access denied".into()),
    }
}

#[test]
fn the_servers_backup_answers_read_as_the_operators() {
    let created: ArchivedBase =
        serde_json::from_value(serde_json::to_value(base()).expect("json")).expect("a base");
    assert_eq!(
        (created.name.as_str(), created.revision, created.index),
        (base().name.as_str(), 77, 120)
    );
    assert_eq!((created.created_at, created.bytes), (1_764_500_000, 4096));
    for on_master in [true, false] {
        let json = serde_json::to_value(list(on_master)).expect("json");
        let read: ArchiveListing = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("the operator cannot read {json}: {e}"));
        assert_eq!(read.archive_url, "s3://b/p/ns/kv");
        assert_eq!(read.backups.len(), 1);
        let r = read.recoverable.expect("recoverable");
        assert_eq!((r.first.revision, r.last.revision), (77, 90));
        assert_eq!(read.recoverable_ranges, vec![r]);
        let expected = if on_master { (140, Some(3)) } else { (0, None) };
        assert_eq!((read.archived_index, read.archive_lag), expected);
        assert_eq!(
            read.archive_error.is_some(),
            on_master,
            "the archiver's error reaches the operator"
        );
    }
}
