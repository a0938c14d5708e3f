//! Size limits on ops, checked before an op is proposed.
//!
//! The log, the network and every replica's memory pay for each op, so
//! oversized ops are refused at the door; the state machine itself never
//! validates, because an op that has been chosen must be applied as it is.

use crate::kv::{CompareTarget, KvError, Op, TxnOp};

/// Upper bounds on the size of a single op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted key, in bytes.
    pub max_key_bytes: usize,
    /// Longest accepted value, in bytes.
    pub max_value_bytes: usize,
    /// Most compares plus operations (both branches) in one transaction.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
        }
    }
}

impl Limits {
    /// Checks a key a client names: not empty, not over the limit, not
    /// in the store's reserved prefix.
    pub fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if crate::auth::is_system_key(key) {
            return Err(KvError::ReservedKey);
        }
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_txn_op(&self, op: &TxnOp) -> Result<(), KvError> {
        match op {
            TxnOp::Put { key, value } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            TxnOp::Delete { key } | TxnOp::Get { key } => self.check_key(key),
        }
    }
}

impl Op {
    /// Checks that the op is within `limits` and names no empty key.
    pub fn validate(&self, limits: &Limits) -> Result<(), KvError> {
        match self {
            Op::Put { key, value, .. } => {
                limits.check_key(key)?;
                limits.check_value(value)
            }
            Op::Delete { key, .. } => limits.check_key(key),
            // Any prefix, the empty one too (every client key); one of
            // the store's own keys is refused like such a key.
            Op::DeletePrefix { prefix, limit } => {
                if !(1..=crate::kv::MAX_DELETE_PREFIX).contains(limit) {
                    return Err(KvError::DeleteLimit {
                        limit: *limit,
                        max: crate::kv::MAX_DELETE_PREFIX,
                    });
                }
                if crate::auth::is_system_key(prefix) {
                    return Err(KvError::ReservedKey);
                }
                if prefix.len() > limits.max_key_bytes {
                    return Err(KvError::KeyTooLarge {
                        len: prefix.len(),
                        max: limits.max_key_bytes,
                    });
                }
                Ok(())
            }
            Op::Txn(txn) => {
                let len = txn.compare.len() + txn.success.len() + txn.failure.len();
                if len > limits.max_txn_ops {
                    return Err(KvError::TooManyTxnOps {
                        len,
                        max: limits.max_txn_ops,
                    });
                }
                for cmp in &txn.compare {
                    limits.check_key(&cmp.key)?;
                    if let CompareTarget::Value(v) = &cmp.target {
                        limits.check_value(v)?;
                    }
                }
                txn.success
                    .iter()
                    .chain(&txn.failure)
                    .try_for_each(|op| limits.check_txn_op(op))?;
                // Checked here, where ops are admitted, not where they are
                // applied: a transaction chosen before this check existed
                // applies as it always did.
                for branch in [&txn.success, &txn.failure] {
                    let mut written = std::collections::HashSet::new();
                    for op in branch {
                        let key = match op {
                            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
                            TxnOp::Get { .. } => continue,
                        };
                        if !written.insert(key.as_slice()) {
                            return Err(KvError::DuplicateTxnKey(
                                String::from_utf8_lossy(key).into_owned(),
                            ));
                        }
                    }
                }
                Ok(())
            }
            // Checked against the auth rules where it is applied.
            Op::Auth(_) => Ok(()),
            // Only the cluster proposes it, with 16 hex digits; anything
            // longer is refused like an oversized key.
            Op::Timeline { id } if id.len() > 64 => Err(KvError::KeyTooLarge {
                len: id.len(),
                max: 64,
            }),
            Op::Timeline { .. } => Ok(()),
            Op::As { op, .. } | Op::Anonymous { op } | Op::Once { op, .. } => op.validate(limits),
            Op::Lease(crate::kv::LeaseOp::Grant { id, ttl_secs }) => {
                crate::kv::lease::check_grant(*id, *ttl_secs, None).map_err(KvError::InvalidLease)
            }
            Op::Lease(crate::kv::LeaseOp::GrantOwned {
                id,
                ttl_secs,
                owner,
            }) => crate::kv::lease::check_grant(*id, *ttl_secs, Some(owner))
                .map_err(KvError::InvalidLease),
            Op::Lease(_) => Ok(()),
            Op::Leased { lease, op } => {
                crate::kv::lease::check_id(*lease).map_err(KvError::InvalidLease)?;
                match &**op {
                    Op::Put { .. } | Op::Txn(_) => op.validate(limits),
                    _ => Err(KvError::InvalidLease(
                        "a lease attaches to puts and transactions only".into(),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Compare, CompareOp, Txn};

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            expect: None,
        }
    }

    fn small() -> Limits {
        Limits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_txn_ops: 3,
        }
    }

    #[test]
    fn defaults_match_documented_values() {
        let l = Limits::default();
        assert_eq!(
            (l.max_key_bytes, l.max_value_bytes, l.max_txn_ops),
            (4096, 1 << 20, 128)
        );
    }

    #[test]
    fn a_key_written_twice_in_one_branch_is_refused_but_once_in_each_is_not() {
        let w = |k: &[u8]| TxnOp::Put {
            key: k.to_vec(),
            value: b"v".to_vec(),
        };
        let d = |k: &[u8]| TxnOp::Delete { key: k.to_vec() };
        let g = |k: &[u8]| TxnOp::Get { key: k.to_vec() };
        let txn = |success: Vec<TxnOp>, failure: Vec<TxnOp>| {
            Op::Txn(Txn {
                compare: vec![],
                success,
                failure,
            })
        };
        let dup = Err(KvError::DuplicateTxnKey("a".into()));
        assert_eq!(txn(vec![w(b"a"), w(b"a")], vec![]).validate(&small()), dup);
        assert_eq!(txn(vec![], vec![w(b"a"), d(b"a")]).validate(&small()), dup);
        assert_eq!(
            txn(vec![w(b"a"), w(b"b")], vec![w(b"a")]).validate(&small()),
            Ok(())
        );
        assert_eq!(
            txn(vec![w(b"a"), g(b"a"), g(b"a")], vec![]).validate(&small()),
            Ok(())
        );
    }

    #[test]
    fn put_at_the_limits_is_accepted() {
        assert_eq!(put(b"kkkk", b"vvvvvvvv").validate(&small()), Ok(()));
    }

    #[test]
    fn oversized_key_is_rejected() {
        assert_eq!(
            put(b"kkkkk", b"v").validate(&small()),
            Err(KvError::KeyTooLarge { len: 5, max: 4 })
        );
        let del = Op::Delete {
            key: b"kkkkk".to_vec(),
            expect: None,
        };
        assert_eq!(
            del.validate(&small()),
            Err(KvError::KeyTooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn a_prefix_delete_is_admitted_for_any_client_prefix_within_its_limit() {
        let wipe = |prefix: &[u8], limit| Op::DeletePrefix {
            prefix: prefix.to_vec(),
            limit,
        };
        let max = crate::kv::MAX_DELETE_PREFIX;
        assert_eq!(wipe(b"", 1).validate(&small()), Ok(()), "every key");
        assert_eq!(wipe(b"kkkk", max).validate(&small()), Ok(()));
        for limit in [0, max + 1] {
            assert_eq!(
                wipe(b"k", limit).validate(&small()),
                Err(KvError::DeleteLimit { limit, max })
            );
        }
        assert_eq!(
            wipe(b"kkkkk", 1).validate(&small()),
            Err(KvError::KeyTooLarge { len: 5, max: 4 })
        );
        assert_eq!(
            wipe(crate::auth::AUTH_PREFIX, 1).validate(&small()),
            Err(KvError::ReservedKey)
        );
    }

    #[test]
    fn oversized_value_is_rejected() {
        assert_eq!(
            put(b"k", b"vvvvvvvvv").validate(&small()),
            Err(KvError::ValueTooLarge { len: 9, max: 8 })
        );
    }

    #[test]
    fn empty_key_is_rejected_everywhere() {
        assert_eq!(put(b"", b"v").validate(&small()), Err(KvError::EmptyKey));
        let del = Op::Delete {
            key: vec![],
            expect: None,
        };
        assert_eq!(del.validate(&small()), Err(KvError::EmptyKey));
        let txn = Op::Txn(Txn {
            failure: vec![TxnOp::Get { key: vec![] }],
            ..Txn::default()
        });
        assert_eq!(txn.validate(&small()), Err(KvError::EmptyKey));
    }

    #[test]
    fn too_many_txn_ops_counts_compares_and_both_branches() {
        let get = TxnOp::Get { key: b"k".to_vec() };
        let cmp = Compare {
            key: b"k".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Version(1),
        };
        let at_limit = Txn {
            compare: vec![cmp.clone()],
            success: vec![get.clone()],
            failure: vec![get.clone()],
        };
        assert_eq!(Op::Txn(at_limit.clone()).validate(&small()), Ok(()));
        let over = Txn {
            compare: vec![cmp.clone(), cmp],
            ..at_limit
        };
        assert_eq!(
            Op::Txn(over).validate(&small()),
            Err(KvError::TooManyTxnOps { len: 4, max: 3 })
        );
    }

    #[test]
    fn txn_keys_and_values_are_checked() {
        let big_put = Op::Txn(Txn {
            success: vec![TxnOp::Put {
                key: b"k".to_vec(),
                value: vec![0; 9],
            }],
            ..Txn::default()
        });
        assert_eq!(
            big_put.validate(&small()),
            Err(KvError::ValueTooLarge { len: 9, max: 8 })
        );
        let big_compare = Op::Txn(Txn {
            compare: vec![Compare {
                key: b"kkkkk".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(vec![]),
            }],
            ..Txn::default()
        });
        assert_eq!(
            big_compare.validate(&small()),
            Err(KvError::KeyTooLarge { len: 5, max: 4 })
        );
    }
}
