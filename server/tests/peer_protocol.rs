//! The peer protocol's bodies, one of every kind: each survives a JSON
//! round trip unchanged, and its JSON has the documented shape.
//!
//! With `PHXKV_PEER_SAMPLES=DIR` the JSON of every sample is also written to
//! `DIR/<Schema>.<n>.json`, where `e2e/peer/check.sh` validates it against
//! the schema of that name in `openapi/phxkv-peer.json`: the document is
//! checked against what the code really sends, not only against itself.

use std::path::PathBuf;

use phxkv::cluster::bootstrap::{Hello, MemberRecord, NodeState};
use phxkv::kv::{
    Compare, CompareOp, CompareTarget, Expect, KeyValue, LeaseOp, Op, OpResult, Txn, TxnOp,
    TxnResponse,
};
use phxkv::node::digest::{Checkpoint, DigestReport};
use phxkv::node::rollback::Mark as AcceptorMark;
use phxkv::node::wire::{
    self as wire, ChangeReply, Forwarded, PeerError, PeerErrorCode, PeerErrorDetail, ProposeReply,
    ReadIndexReply, TransferRefusal, TransferReply, TransferRequest,
};
use phxkv::paxos::{
    Ballot, Command, ConfChange, Envelope, LogEntry, Member, Membership, Message, ReadIndexAnswer,
    RejectReason, RequestId, Role, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn put(key: &[u8], value: &[u8]) -> Command {
    Command {
        id: RequestId {
            client: 0x8000_0000_0000_0001,
            seq: 7,
        },
        op: Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            expect: Some(Expect::Version(0)),
        },
    }
}

fn commands() -> Vec<Command> {
    let txn = Txn {
        compare: vec![
            Compare {
                key: b"a".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(vec![0, 255]),
            },
            Compare {
                key: b"b".to_vec(),
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(3),
            },
        ],
        success: vec![
            TxnOp::Put {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
            },
            TxnOp::Get { key: b"b".to_vec() },
        ],
        failure: vec![TxnOp::Delete { key: b"a".to_vec() }],
    };
    vec![
        put(b"key", &[7u8; 40]),
        Command {
            id: RequestId { client: 1, seq: 2 },
            op: Op::Delete {
                key: b"gone".to_vec(),
                expect: Some(Expect::ModRevision(9)),
            },
        },
        Command {
            id: RequestId { client: 1, seq: 4 },
            op: Op::Leased {
                lease: 77,
                op: Box::new(Op::Txn(txn.clone())),
            },
        },
        Command {
            id: RequestId { client: 1, seq: 3 },
            op: Op::Txn(txn),
        },
        Command {
            id: RequestId { client: 1, seq: 5 },
            op: Op::Lease(LeaseOp::Grant {
                id: 77,
                ttl_secs: 10,
            }),
        },
        Command {
            id: RequestId { client: 1, seq: 6 },
            op: Op::Lease(LeaseOp::Revoke { id: 77 }),
        },
        Command {
            id: RequestId { client: 9, seq: 1 },
            op: Op::Lease(LeaseOp::Expire {
                id: 77,
                granted: 12,
            }),
        },
        Command {
            id: RequestId { client: 9, seq: 2 },
            op: Op::Lease(LeaseOp::Fence {
                ballot: Ballot::new(4, 17),
            }),
        },
        Command {
            id: RequestId { client: 9, seq: 3 },
            op: Op::Lease(LeaseOp::ExpireFenced {
                id: 77,
                granted: 12,
                fence: 2,
            }),
        },
        Command {
            id: RequestId { client: 1, seq: 7 },
            op: Op::Once {
                after: 41,
                op: Box::new(Op::Put {
                    key: b"once".to_vec(),
                    value: b"v".to_vec(),
                    expect: None,
                }),
            },
        },
    ]
}

fn membership() -> Membership {
    let mut m = Membership::default();
    for (id, name, role) in [
        (u64::MAX - 5, "a", Role::Voter),
        (17, "b", Role::Voter),
        (18, "c", Role::Learner),
    ] {
        m.members.insert(
            id,
            Member {
                name: name.into(),
                addr: format!("http://{name}:8081"),
                role,
            },
        );
    }
    m
}

fn envelopes() -> Vec<Envelope> {
    let b = Ballot::new(4, u64::MAX - 5);
    let entry = |value, chosen| LogEntry {
        ballot: b,
        value,
        chosen,
    };
    let msgs = vec![
        Message::Prepare {
            ballot: b,
            from_index: 10,
        },
        Message::Promise {
            ballot: b,
            entries: vec![
                (10, entry(Value::Batch(commands().into()), false)),
                (11, entry(Value::Noop, true)),
                (12, entry(Value::Config(membership()), false)),
            ],
            commit: 9,
        },
        Message::Reject {
            ballot: b,
            promised: Ballot::new(5, 17),
            reason: RejectReason::Lease { holder: 17 },
        },
        Message::Reject {
            ballot: b,
            promised: Ballot::new(5, 17),
            reason: RejectReason::Outdated,
        },
        Message::Reject {
            ballot: b,
            promised: Ballot::ZERO,
            reason: RejectReason::Behind { commit: 4000 },
        },
        Message::Accept {
            ballot: b,
            entries: vec![
                (
                    13,
                    Value::Lease {
                        holder: u64::MAX - 5,
                        duration_ms: 1000,
                    },
                ),
                (14, Value::Batch(vec![put(b"k", b"v")].into())),
            ],
            commit: 12,
        },
        Message::Accepted {
            ballot: b,
            indexes: vec![13, 14],
            commit: 12,
        },
        Message::Heartbeat {
            ballot: b,
            commit: 14,
        },
        Message::HeartbeatAck {
            ballot: b,
            commit: 14,
        },
        Message::CatchupRequest { from_index: 3 },
        Message::TimeoutNow { ballot: b },
        Message::Catchup {
            entries: vec![(3, Value::Noop)],
            commit: 14,
        },
        Message::ReadIndexRequest { seq: u64::MAX - 2 },
        Message::ReadIndexAnswer {
            seq: 4,
            answer: ReadIndexAnswer::Index(41),
        },
        Message::ReadIndexAnswer {
            seq: 5,
            answer: ReadIndexAnswer::NotMaster { hint: Some(17) },
        },
        Message::ReadIndexAnswer {
            seq: 6,
            answer: ReadIndexAnswer::NotNow,
        },
        Message::Forward {
            cmds: vec![put(b"k", b"v")],
        },
        Message::ForwardRefused {
            ids: vec![RequestId {
                client: u64::MAX - 1,
                seq: 9,
            }],
            hint: Some(u64::MAX - 5),
            busy: false,
        },
    ];
    msgs.into_iter()
        .map(|msg| Envelope {
            from: u64::MAX - 5,
            to: 17,
            msg,
        })
        .collect()
}

fn results() -> Vec<OpResult> {
    vec![
        OpResult::Put {
            revision: 5,
            version: 1,
        },
        OpResult::Delete {
            revision: 5,
            deleted: false,
        },
        OpResult::CompareFailed {
            current_version: 2,
            current_mod_revision: 4,
        },
        OpResult::Txn {
            succeeded: true,
            revision: 6,
            responses: vec![
                TxnResponse::Put { revision: 6 },
                TxnResponse::Delete { deleted: true },
                TxnResponse::Get {
                    kv: Some(KeyValue {
                        key: b"b".to_vec(),
                        value: vec![1, 2, 3],
                        version: 1,
                        create_revision: 2,
                        mod_revision: 2,
                    }),
                },
                TxnResponse::Get { kv: None },
            ],
        },
        OpResult::IdempotencyKeyReused,
        OpResult::LeaseGranted {
            id: 77,
            ttl_secs: 10,
            revision: 12,
        },
        OpResult::LeaseRevoked {
            id: 77,
            revision: 20,
            deleted: 3,
        },
        OpResult::LeaseNotFound { id: 77 },
        OpResult::LeaseIdTaken { id: 77 },
        OpResult::LeaseFenced {
            number: 2,
            revision: 21,
        },
        OpResult::Forgotten,
    ]
}

/// Writes samples when asked, and checks each round-trips.
struct Samples {
    dir: Option<PathBuf>,
    written: usize,
}

impl Samples {
    fn new() -> Samples {
        let dir = std::env::var_os("PHXKV_PEER_SAMPLES").map(PathBuf::from);
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).expect("the samples directory can be made");
        }
        Samples { dir, written: 0 }
    }

    fn add<T>(&mut self, schema: &str, value: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = wire::encode(value).expect("encodes");
        let back: T = wire::decode(&bytes).expect("decodes");
        assert_eq!(&back, value, "{schema}");
        let json = serde_json::to_vec_pretty(value).expect("json");
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{schema}.{}.json", self.written));
            std::fs::write(&path, &json).expect("sample written");
        }
        self.written += 1;
    }
}

#[test]
fn every_peer_body_round_trips_and_can_be_checked_against_the_document() {
    let mut s = Samples::new();
    s.add("Envelope", &envelopes());
    for e in envelopes() {
        s.add("Envelope", &e);
    }
    for c in commands() {
        s.add("Command", &c);
    }
    for r in results() {
        s.add("ProposeReply", &ProposeReply::Applied(r));
    }
    s.add(
        "ProposeReply",
        &ProposeReply::NotMaster {
            hint: Some(u64::MAX - 5),
        },
    );
    s.add("ProposeReply", &ProposeReply::NotMaster { hint: None });
    s.add("ProposeReply", &ProposeReply::Busy("queue full".into()));
    s.add(
        "Forwarded",
        &Forwarded::Reply(ProposeReply::Busy("queue full".into())),
    );
    s.add("Forwarded", &Forwarded::Failed("timed out".into()));
    s.add("ReadIndexReply", &ReadIndexReply::Index(41));
    s.add("ReadIndexReply", &ReadIndexReply::NoLease);
    s.add(
        "ReadIndexReply",
        &ReadIndexReply::NotMaster { hint: Some(17) },
    );
    s.add(
        "LeaseQuestion",
        &wire::LeaseQuestion {
            ids: vec![77, 78],
            renew: true,
        },
    );
    s.add(
        "LeaseReply",
        &wire::LeaseReply::Leases(vec![
            wire::LeaseAnswer::Alive {
                id: 77,
                ttl_secs: 10,
                remaining_ms: 9_990,
                granted_revision: 12,
            },
            wire::LeaseAnswer::NotFound { id: 78 },
            wire::LeaseAnswer::Expired { id: 79 },
        ]),
    );
    s.add("LeaseReply", &wire::LeaseReply::NotMaster { hint: Some(3) });
    s.add("ChangeReply", &ChangeReply::Index(50));
    s.add("ChangeReply", &ChangeReply::Rejected("busy".into()));
    s.add("ChangeReply", &ChangeReply::NotMaster { hint: None });
    s.add(
        "TransferRequest",
        &TransferRequest {
            target: u64::MAX - 5,
        },
    );
    for reply in [
        TransferReply::HandedOver {
            master: Some(u64::MAX - 5),
        },
        TransferReply::HandedOver { master: None },
        TransferReply::AlreadyMaster,
        TransferReply::NotMaster { hint: Some(17) },
        TransferReply::Refused {
            reason: TransferRefusal::NotReady,
            message: "behind".into(),
        },
        TransferReply::Refused {
            reason: TransferRefusal::InProgress,
            message: "in progress".into(),
        },
    ] {
        s.add("TransferReply", &reply);
    }
    for c in [
        ConfChange::AddLearner {
            id: 18,
            name: "c".into(),
            addr: "http://c:8081".into(),
        },
        ConfChange::Promote { id: 18 },
        ConfChange::Remove { id: 18 },
    ] {
        s.add("ConfChange", &c);
    }
    let record = MemberRecord {
        name: "a".into(),
        id: "fffffffffffffffa".into(),
        peer_url: "http://a:8081".into(),
        voter: true,
    };
    s.add(
        "Hello",
        &Hello {
            cluster_id: "phxkv".into(),
            name: "a".into(),
            incarnation: "fffffffffffffffa".into(),
            state: NodeState::Member,
            bootstrap: Some(vec![record.clone()]),
            members: Some(vec![record]),
            list: vec!["a=http://a:8081".into()],
        },
    );
    s.add(
        "DigestReport",
        &DigestReport {
            name: "a".into(),
            checkpoints: vec![
                Checkpoint {
                    index: 64,
                    digest: "0123456789abcdef0123456789abcdef".into(),
                    requests: Some("fedcba9876543210fedcba9876543210".into()),
                },
                // As a replica of an earlier version sends it.
                Checkpoint {
                    index: 128,
                    digest: "00112233445566778899aabbccddeeff".into(),
                    requests: None,
                },
            ],
            durable: Some(AcceptorMark {
                promised: Ballot::new(7, 0x0123_4567_89ab_cdef),
                accepted_to: 130,
            }),
            incarnation: Some("0123456789abcdef".into()),
        },
    );
    s.add(
        "AcceptorMark",
        &AcceptorMark {
            promised: Ballot::new(7, 0x0123_4567_89ab_cdef),
            accepted_to: 130,
        },
    );
    s.add(
        "PeerError",
        &PeerError {
            error: PeerErrorDetail {
                code: PeerErrorCode::WrongIncarnation,
                message: "another incarnation".into(),
            },
        },
    );
    s.add(
        "PeerError",
        &PeerError {
            error: PeerErrorDetail {
                code: PeerErrorCode::TooManyAttempts,
                message: "too many wrong cluster tokens from this address; retry in 59 s".into(),
            },
        },
    );
    assert!(s.written > 30);
}

#[test]
fn json_bodies_read_as_the_document_says() {
    // A hand-written body, as another implementation would send it.
    let body = r#"[{"from": 17, "to": 18446744073709551610,
        "msg": {"accept": {"ballot": {"round": 2, "node": 17}, "commit": 0,
            "entries": [[1, {"batch": [{"id": {"client": 1, "seq": 1},
                "op": {"put": {"key": "aGVsbG8=", "value": "d29ybGQ", "expect": null}}}]}],
                        [2, "noop"]]}}}]"#;
    let envs: Vec<Envelope> = wire::decode(body.as_bytes()).expect("decodes");
    assert_eq!(envs[0].to, u64::MAX - 5);
    let Message::Accept { entries, .. } = &envs[0].msg else {
        panic!("not an accept: {envs:?}");
    };
    let Value::Batch(cmds) = &entries[0].1 else {
        panic!("not a batch: {entries:?}");
    };
    assert_eq!(
        cmds[0].op,
        Op::Put {
            key: b"hello".to_vec(),
            value: b"world".to_vec(),
            expect: None
        }
    );
    assert_eq!(entries[1].1, Value::Noop);
    // Unknown message kinds and bad base64 are errors, not guesses.
    assert!(wire::decode::<Vec<Envelope>>(br#"[{"from":1,"to":2,"msg":{"shout":{}}}]"#).is_err());
    let bad = wire::decode::<Command>(
        br#"{"id":{"client":1,"seq":1},"op":{"delete":{"key":"%%","expect":null}}}"#,
    )
    .expect_err("bad base64");
    assert!(bad.contains("base64"), "{bad}");
}
