//! Linearizability checker for client histories of the key-value store.
//!
//! # Model
//!
//! Each key holds `Option<(value, version)>`. A put stores the value and bumps
//! the version (a key that did not exist starts at version 1); a delete removes
//! the key, so a recreated key starts again at version 1; a get returns the
//! value; a compare-and-swap stores its value iff the key's version equals the
//! expected one (0 meaning "absent"). A prefix delete removes every key
//! under its prefix.
//!
//! # Algorithm
//!
//! Every operation but the prefix delete touches exactly one key, and
//! linearizability is a *local* property (Herlihy & Wing): a history is
//! linearizable iff each per-object sub-history is. So the history is split by
//! key and each key is checked on its own, which keeps the search spaces small
//! and independent. A prefix delete joins the sub-history of every key under
//! its prefix as a delete whose answer is not checked (it says how many keys
//! it deleted, not which). That is each key's view of it; that all of them
//! happen at one point is not checked here (the store's unit tests do: one
//! revision for all).
//!
//! For one key, the search is the Wing & Gong backtracking search with Lowe's
//! memoization. A linearization is built left to right. An operation may come
//! next iff no other not-yet-linearized *completed* operation returned before it
//! was invoked. Keeping the call and return events in a time-ordered doubly
//! linked list, and unlinking both events of an operation once it is placed,
//! makes the candidates exactly the calls that precede the first remaining
//! return event; placing and un-placing are O(1) and undo in LIFO order.
//! Each placement runs the operation on the sequential model and must reproduce
//! the recorded return. When a return event is reached, the operation it
//! belongs to can no longer be placed in time, so the search backtracks.
//!
//! Why it is sound and complete: every choice the search makes respects real
//! time and the sequential model, so a completed search *is* a witness
//! linearization; conversely every real-time-respecting order is reachable, so
//! exhausting the choices proves there is none. Memoization does not lose
//! witnesses because what can still happen depends only on the set of placed
//! operations and the model state: a second visit of the same pair cannot
//! reach anything the first visit did not.
//!
//! Operations with an unknown outcome (timeout, crash) may have taken effect at
//! any point after their invocation, or never. They have no return event, so
//! they never force anything to be placed before them, and their return is not
//! checked. The search succeeds once every completed operation is placed:
//! whichever unknown ones are still unplaced are taken to have never happened.
//! Unknown gets have no effect at all and are dropped up front. Candidates with
//! a known outcome are tried before unknown ones, since omitting an unknown
//! operation is usually the cheap explanation.
//!
//! Three reductions keep the search small without changing the verdict:
//! - a get returning a value no operation on its key ever wrote is reported
//!   before searching;
//! - values that no completed get returned are merged into one: the model's
//!   outputs can only tell values apart through get returns, so merging them
//!   changes no outcome but lets equivalent states meet in the memo;
//! - unknown-outcome operations with the same (merged) effect are placed in
//!   invocation order only. Any witness placing a later one while an earlier
//!   twin is unplaced can swap the two: the earlier one was invoked first, so
//!   it is a candidate wherever the later one is, and candidacy only grows as
//!   the search advances, so the later one can take the earlier one's place.
//!
//! Equal timestamps count as overlapping (calls sort before returns at the same
//! instant); this can only accept more histories, never raise a false alarm.
//!
//! The search is exponential in the worst case, so it counts distinct states
//! visited per key and gives up with [`CheckResult::Unknown`] past a budget,
//! rather than deliver a verdict it has not earned.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A client request against one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCall {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Succeeds iff the key's current version equals `expected_version` (0 = key absent).
    Cas {
        key: Vec<u8>,
        expected_version: u64,
        value: Vec<u8>,
    },
    /// Deletes every key starting with `prefix`.
    DeletePrefix {
        prefix: Vec<u8>,
    },
}

impl KvCall {
    pub fn key(&self) -> &[u8] {
        match self {
            KvCall::Put { key, .. }
            | KvCall::Get { key }
            | KvCall::Delete { key }
            | KvCall::Cas { key, .. } => key,
            KvCall::DeletePrefix { prefix } => prefix,
        }
    }

    /// Whether the call touches `key`.
    pub fn touches(&self, key: &[u8]) -> bool {
        match self {
            KvCall::DeletePrefix { prefix } => key.starts_with(prefix),
            other => other.key() == key,
        }
    }
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvReturn {
    Put,
    Get(Option<Vec<u8>>),
    Delete {
        deleted: bool,
    },
    Cas {
        ok: bool,
    },
    /// A prefix delete's answer (how many keys: not checked).
    DeletePrefix,
}

/// One operation of a history; times come from one global logical clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub call: KvCall,
    pub invoked: u64,
    /// `None`: the outcome is unknown, the operation may or may not have taken effect.
    pub completed: Option<(u64, KvReturn)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    NotLinearizable {
        key: Vec<u8>,
        explanation: String,
    },
    /// The search budget ran out on this key before a verdict was reached.
    Unknown {
        key: Vec<u8>,
    },
}

/// Distinct search states explored per key before giving up.
pub const DEFAULT_STATE_BUDGET: usize = 200_000;

/// Checks `history` with [`DEFAULT_STATE_BUDGET`].
pub fn check(history: &[Operation]) -> CheckResult {
    check_with_budget(history, DEFAULT_STATE_BUDGET)
}

/// Checks `history`, exploring at most `budget` distinct states per key.
///
/// A violation on any key wins over running out of budget on another.
pub fn check_with_budget(history: &[Operation], budget: usize) -> CheckResult {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    let (wide, single): (Vec<&Operation>, Vec<&Operation>) = history
        .iter()
        .partition(|op| matches!(op.call, KvCall::DeletePrefix { .. }));
    for op in single {
        by_key.entry(op.call.key()).or_default().push(op);
    }
    // Each prefix delete is a delete of every key under it that the
    // history names (the others no operation can tell anything about).
    for (key, ops) in by_key.iter_mut() {
        ops.extend(wide.iter().filter(|op| op.call.touches(key)));
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            Outcome::Linearizable => {}
            Outcome::Violation(explanation) => {
                return CheckResult::NotLinearizable {
                    key: key.to_vec(),
                    explanation,
                };
            }
            Outcome::OverBudget => {
                unknown.get_or_insert(key);
            }
        }
    }
    match unknown {
        Some(key) => CheckResult::Unknown { key: key.to_vec() },
        None => CheckResult::Linearizable,
    }
}

/// Values are interned per key so that model states are small and `Copy`.
type ValueId = u32;
/// `None` when the key is absent, else (value, version).
type State = Option<(ValueId, u64)>;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Put(ValueId),
    Get,
    Delete,
    Cas {
        expected: u64,
        value: ValueId,
    },
    /// A delete whose answer is not checked (a prefix delete's view).
    DeleteAny,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ret {
    Put,
    Get(Option<ValueId>),
    Delete(bool),
    Cas(bool),
    DeleteAny,
}

fn apply(state: State, call: Call) -> (State, Ret) {
    let version = state.map_or(0, |(_, v)| v);
    match call {
        Call::Put(value) => (Some((value, version + 1)), Ret::Put),
        Call::Get => (state, Ret::Get(state.map(|(value, _)| value))),
        Call::Delete => (None, Ret::Delete(state.is_some())),
        Call::Cas { expected, value } if expected == version => {
            (Some((value, version + 1)), Ret::Cas(true))
        }
        Call::Cas { .. } => (state, Ret::Cas(false)),
        Call::DeleteAny => (None, Ret::DeleteAny),
    }
}

/// Values that no completed get returned all share this id: no return can tell
/// them apart, and merging them lets equivalent search states meet in the memo.
const UNREAD: ValueId = 0;

struct Values<'a> {
    ids: HashMap<&'a [u8], ValueId>,
    names: Vec<&'a [u8]>,
}

impl<'a> Values<'a> {
    fn new(ops: &[&'a Operation]) -> Self {
        let mut values = Values {
            ids: HashMap::new(),
            names: vec![&[]],
        };
        for op in ops {
            if let Some((_, KvReturn::Get(Some(value)))) = &op.completed {
                let next = ValueId::try_from(values.names.len()).unwrap_or(ValueId::MAX);
                values.ids.entry(value).or_insert_with(|| {
                    values.names.push(value);
                    next
                });
            }
        }
        values
    }

    fn id(&self, value: &[u8]) -> ValueId {
        self.ids.get(value).copied().unwrap_or(UNREAD)
    }
}

enum Outcome {
    Linearizable,
    Violation(String),
    OverBudget,
}

/// Index of the list head; the list is circular through it.
const HEAD: usize = 0;

fn check_key(all: &[&Operation], budget: usize) -> Outcome {
    // A get with an unknown outcome neither changes the state nor constrains anything.
    let ops: Vec<&Operation> = all
        .iter()
        .copied()
        .filter(|op| op.completed.is_some() || !matches!(op.call, KvCall::Get { .. }))
        .collect();
    // Reading a value that was never written needs no search, and refuting it by
    // search can cost the whole budget when many outcomes are unknown.
    let written: HashSet<&[u8]> = ops
        .iter()
        .filter_map(|op| match &op.call {
            KvCall::Put { value, .. } | KvCall::Cas { value, .. } => Some(value.as_slice()),
            _ => None,
        })
        .collect();
    if let Some(op) = ops.iter().find(|op| {
        matches!(&op.completed, Some((_, KvReturn::Get(Some(v)))) if !written.contains(v.as_slice()))
    }) {
        return Outcome::Violation(format!("{} read a value never written", describe(op)));
    }
    let values = Values::new(&ops);
    let calls: Vec<Call> = ops
        .iter()
        .map(|op| match &op.call {
            KvCall::Put { value, .. } => Call::Put(values.id(value)),
            KvCall::Get { .. } => Call::Get,
            KvCall::Delete { .. } => Call::Delete,
            KvCall::Cas {
                expected_version,
                value,
                ..
            } => Call::Cas {
                expected: *expected_version,
                value: values.id(value),
            },
            KvCall::DeletePrefix { .. } => Call::DeleteAny,
        })
        .collect();
    let rets: Vec<Option<Ret>> = ops
        .iter()
        .map(|op| {
            op.completed.as_ref().map(|(_, ret)| match ret {
                KvReturn::Put => Ret::Put,
                KvReturn::Get(value) => Ret::Get(value.as_deref().map(|v| values.id(v))),
                KvReturn::Delete { deleted } => Ret::Delete(*deleted),
                KvReturn::Cas { ok } => Ret::Cas(*ok),
                KvReturn::DeletePrefix => Ret::DeleteAny,
            })
        })
        .collect();

    // Events as (time, is_return, op); node i + 1 holds events[i], node HEAD is the sentinel.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        if let Some((t, _)) = op.completed {
            events.push((t, true, i));
        }
    }
    events.sort_unstable();
    let nodes = events.len() + 1;
    let mut next: Vec<usize> = (1..=nodes).map(|n| n % nodes).collect();
    let mut prev: Vec<usize> = (0..nodes).map(|n| (n + nodes - 1) % nodes).collect();
    let mut call_node = vec![HEAD; ops.len()];
    let mut ret_node = vec![None; ops.len()];
    // Unknown-outcome ops with the same effect are interchangeable once both are
    // invoked, so only orders that place them in invocation order are explored:
    // each waits for its `twin`, the previous such op, to be placed first.
    let mut twin = vec![None; ops.len()];
    let mut last_unknown: HashMap<Call, usize> = HashMap::new();
    for (i, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_node[op] = Some(i + 1);
        } else {
            call_node[op] = i + 1;
            if rets[op].is_none() {
                twin[op] = last_unknown.insert(calls[op], op);
            }
        }
    }
    let node_op = |n: usize| events[n - 1].2;
    let is_return = |n: usize| n == HEAD || events[n - 1].1;

    let mut placed = vec![0u64; ops.len().div_ceil(64)];
    let is_placed = |placed: &[u64], op: usize| placed[op / 64] & (1 << (op % 64)) != 0;
    let mut seen: HashMap<State, HashSet<Vec<u64>>> = HashMap::new();
    let mut explored = 0;
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut remaining = rets.iter().filter(|r| r.is_some()).count();
    // Pass 0 tries completed calls, pass 1 the unknown ones, over the same candidates.
    let mut cur = next[HEAD];
    let mut pass = 0;
    let mut deepest: Option<(usize, usize, State)> = None;

    while remaining > 0 {
        if is_return(cur) {
            if pass == 0 {
                pass = 1;
                cur = next[HEAD];
                continue;
            }
            // The first operation still due to return cannot be placed any more.
            if cur != HEAD && deepest.is_none_or(|(depth, ..)| stack.len() > depth) {
                deepest = Some((stack.len(), node_op(cur), state));
            }
            let Some((op, before)) = stack.pop() else {
                return Outcome::Violation(explain(&ops, &values, deepest));
            };
            state = before;
            placed[op / 64] &= !(1 << (op % 64));
            let call = call_node[op];
            if let Some(r) = ret_node[op] {
                remaining += 1;
                relink(&mut next, &mut prev, r);
            }
            relink(&mut next, &mut prev, call);
            pass = usize::from(rets[op].is_none());
            cur = next[call];
            continue;
        }
        let op = node_op(cur);
        let wanted = match rets[op] {
            Some(_) => pass == 0,
            None => pass == 1 && twin[op].is_none_or(|t| is_placed(&placed, t)),
        };
        if !wanted {
            cur = next[cur];
            continue;
        }
        let (after, ret) = apply(state, calls[op]);
        if rets[op].is_none_or(|r| r == ret) {
            placed[op / 64] |= 1 << (op % 64);
            let visited = seen.entry(after).or_default();
            if !visited.contains(placed.as_slice()) {
                visited.insert(placed.clone());
                explored += 1;
                if explored > budget {
                    return Outcome::OverBudget;
                }
                stack.push((op, state));
                state = after;
                unlink(&mut next, &mut prev, call_node[op]);
                if let Some(r) = ret_node[op] {
                    remaining -= 1;
                    unlink(&mut next, &mut prev, r);
                }
                cur = next[HEAD];
                pass = 0;
                continue;
            }
            placed[op / 64] &= !(1 << (op % 64));
        }
        cur = next[cur];
    }
    Outcome::Linearizable
}

fn unlink(next: &mut [usize], prev: &mut [usize], n: usize) {
    next[prev[n]] = next[n];
    prev[next[n]] = prev[n];
}

/// Undoes [`unlink`]; valid because undos happen in reverse order of unlinks.
fn relink(next: &mut [usize], prev: &mut [usize], n: usize) {
    next[prev[n]] = n;
    prev[next[n]] = n;
}

fn explain(ops: &[&Operation], values: &Values, deepest: Option<(usize, usize, State)>) -> String {
    let Some((depth, op, state)) = deepest else {
        return "no linearization exists".to_string();
    };
    let state = match state {
        None => "absent".to_string(),
        Some((UNREAD, version)) => format!("holding a value no get returned, at version {version}"),
        Some((value, version)) => {
            let name = values
                .names
                .get(value as usize)
                .copied()
                .unwrap_or_default();
            format!("{} at version {version}", show(name))
        }
    };
    format!(
        "{} cannot be linearized (best attempt placed {depth} of {} ops, leaving the key {state})",
        describe(ops[op]),
        ops.len(),
    )
}

fn describe(op: &Operation) -> String {
    let call = match &op.call {
        KvCall::Put { value, .. } => format!("put {}", show(value)),
        KvCall::Get { .. } => "get".to_string(),
        KvCall::Delete { .. } => "delete".to_string(),
        KvCall::Cas {
            expected_version,
            value,
            ..
        } => format!("cas v{expected_version} -> {}", show(value)),
        KvCall::DeletePrefix { prefix } => format!("delete prefix {}", show(prefix)),
    };
    let outcome = match &op.completed {
        None => format!("unknown outcome, invoked {}", op.invoked),
        Some((t, ret)) => {
            let ret = match ret {
                KvReturn::Put => "ok".to_string(),
                KvReturn::Get(None) => "none".to_string(),
                KvReturn::Get(Some(v)) => show(v),
                KvReturn::Delete { deleted } => format!("deleted={deleted}"),
                KvReturn::Cas { ok } => format!("ok={ok}"),
                KvReturn::DeletePrefix => "ok".to_string(),
            };
            format!("returned {ret}, invoked {} completed {t}", op.invoked)
        }
    };
    format!("client {} {call} ({outcome})", op.client)
}

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => bytes.iter().fold("0x".to_string(), |mut out, b| {
            out.push_str(&format!("{b:02x}"));
            out
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }
    fn put(value: &str) -> KvCall {
        KvCall::Put {
            key: b("k"),
            value: b(value),
        }
    }
    fn get() -> KvCall {
        KvCall::Get { key: b("k") }
    }
    fn del() -> KvCall {
        KvCall::Delete { key: b("k") }
    }
    fn cas(expected_version: u64, value: &str) -> KvCall {
        KvCall::Cas {
            key: b("k"),
            expected_version,
            value: b(value),
        }
    }
    fn got(value: Option<&str>) -> KvReturn {
        KvReturn::Get(value.map(b))
    }
    fn done(client: u64, call: KvCall, invoked: u64, completed: u64, ret: KvReturn) -> Operation {
        Operation {
            client,
            call,
            invoked,
            completed: Some((completed, ret)),
        }
    }
    fn lost(client: u64, call: KvCall, invoked: u64) -> Operation {
        Operation {
            client,
            call,
            invoked,
            completed: None,
        }
    }

    fn assert_violation(history: &[Operation]) -> String {
        match check(history) {
            CheckResult::NotLinearizable { key, explanation } => {
                assert_eq!(key, b("k"));
                assert!(explanation.contains("client"), "{explanation}");
                explanation
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_puts_and_gets_are_linearizable() {
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(1, get(), 3, 4, got(Some("a"))),
            done(2, put("b"), 5, 6, KvReturn::Put),
            done(1, get(), 7, 8, got(Some("b"))),
            done(2, KvCall::Get { key: b("other") }, 9, 10, got(None)),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn concurrent_get_may_see_old_or_new_value() {
        for seen in ["old", "new"] {
            let history = [
                done(1, put("old"), 1, 2, KvReturn::Put),
                done(1, put("new"), 3, 10, KvReturn::Put),
                done(2, get(), 4, 5, got(Some(seen))),
            ];
            assert_eq!(check(&history), CheckResult::Linearizable, "{seen}");
        }
    }

    #[test]
    fn cas_race_with_exactly_one_winner_is_linearizable() {
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(2, cas(1, "x"), 3, 10, KvReturn::Cas { ok: false }),
            done(3, cas(1, "y"), 4, 9, KvReturn::Cas { ok: true }),
            done(1, get(), 11, 12, got(Some("y"))),
            // Version 2 now belongs to "y".
            done(2, cas(2, "z"), 13, 14, KvReturn::Cas { ok: true }),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn unknown_outcome_put_observed_later_is_linearizable() {
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            lost(2, put("b"), 3),
            // It may take effect long after the client gave up on it.
            done(1, get(), 20, 21, got(Some("a"))),
            done(3, get(), 30, 31, got(Some("b"))),
            done(1, get(), 32, 33, got(Some("b"))),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn unknown_outcome_put_never_observed_is_linearizable() {
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            lost(2, put("b"), 3),
            lost(2, cas(1, "c"), 4),
            lost(2, get(), 5),
            done(1, get(), 20, 21, got(Some("a"))),
            done(1, get(), 22, 23, got(Some("a"))),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn delete_then_get_none_is_linearizable() {
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(1, put("b"), 3, 4, KvReturn::Put),
            done(1, del(), 5, 6, KvReturn::Delete { deleted: true }),
            done(2, get(), 7, 8, got(None)),
            done(2, del(), 9, 10, KvReturn::Delete { deleted: false }),
            // A recreated key starts over at version 1.
            done(1, cas(0, "c"), 11, 12, KvReturn::Cas { ok: true }),
            done(1, cas(1, "d"), 13, 14, KvReturn::Cas { ok: true }),
            done(2, get(), 15, 16, got(Some("d"))),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_not_linearizable() {
        let explanation = assert_violation(&[
            done(1, put("v1"), 1, 2, KvReturn::Put),
            done(1, put("v2"), 3, 4, KvReturn::Put),
            done(2, get(), 5, 6, got(Some("v1"))),
        ]);
        assert!(explanation.contains("client 2 get"), "{explanation}");
    }

    #[test]
    fn lost_acknowledged_write_is_not_linearizable() {
        assert_violation(&[
            done(1, put("v1"), 1, 2, KvReturn::Put),
            done(2, get(), 3, 4, got(None)),
            done(2, get(), 5, 6, got(None)),
        ]);
        assert_violation(&[
            done(1, put("v1"), 1, 2, KvReturn::Put),
            done(1, put("v2"), 3, 4, KvReturn::Put),
            done(2, get(), 5, 20, got(Some("v1"))),
            done(3, get(), 6, 21, got(Some("v1"))),
        ]);
    }

    #[test]
    fn two_cas_winners_on_one_version_are_not_linearizable() {
        assert_violation(&[
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(2, cas(1, "x"), 3, 10, KvReturn::Cas { ok: true }),
            done(3, cas(1, "y"), 4, 9, KvReturn::Cas { ok: true }),
        ]);
    }

    #[test]
    fn read_of_value_never_written_is_not_linearizable() {
        let explanation = assert_violation(&[
            done(1, put("a"), 1, 2, KvReturn::Put),
            lost(3, put("b"), 3),
            done(2, get(), 3, 4, got(Some("ghost"))),
        ]);
        assert!(explanation.contains("\"ghost\""), "{explanation}");
    }

    #[test]
    fn get_after_completed_delete_is_not_linearizable() {
        assert_violation(&[
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(1, del(), 3, 4, KvReturn::Delete { deleted: true }),
            done(2, get(), 5, 6, got(Some("a"))),
        ]);
    }

    #[test]
    fn a_prefix_delete_counts_as_a_delete_of_every_key_under_it() {
        let wipe = |prefix: &str| KvCall::DeletePrefix { prefix: b(prefix) };
        // k is under "k" and "" but not under "kx".
        for prefix in ["k", ""] {
            assert_violation(&[
                done(1, put("a"), 1, 2, KvReturn::Put),
                done(1, wipe(prefix), 3, 4, KvReturn::DeletePrefix),
                done(2, get(), 5, 6, got(Some("a"))),
            ]);
        }
        let history = [
            done(1, put("a"), 1, 2, KvReturn::Put),
            done(1, wipe("kx"), 3, 4, KvReturn::DeletePrefix),
            done(2, get(), 5, 6, got(Some("a"))),
            // Overlapping the wipe, a read may see before or after it.
            done(3, wipe("k"), 7, 10, KvReturn::DeletePrefix),
            done(2, get(), 8, 9, got(Some("a"))),
            done(2, get(), 11, 12, got(None)),
            // An unknown wipe may have happened, or not.
            lost(1, wipe("k"), 13),
            done(1, put("b"), 14, 15, KvReturn::Put),
            done(2, get(), 16, 17, got(Some("b"))),
        ];
        assert_eq!(check(&history), CheckResult::Linearizable);
    }

    #[test]
    fn violation_wins_over_unknown_and_keys_are_independent() {
        let mut history = pathological(20);
        history.push(Operation {
            call: KvCall::Get { key: b("j") },
            ..done(9, get(), 1, 2, got(Some("never")))
        });
        match check_with_budget(&history, 1_000) {
            CheckResult::NotLinearizable { key, .. } => assert_eq!(key, b("j")),
            other => panic!("expected a violation on j, got {other:?}"),
        }
    }

    /// `n` overlapping puts, then a delete and a read of the first put: every
    /// subset of the puts is a distinct state before the read can be refuted.
    fn pathological(n: u64) -> Vec<Operation> {
        let mut history: Vec<Operation> = (0..n)
            .map(|i| done(i, put(&format!("v{i}")), i, 1_000, KvReturn::Put))
            .collect();
        history.push(done(
            n,
            del(),
            1_001,
            1_002,
            KvReturn::Delete { deleted: true },
        ));
        history.push(done(n, get(), 1_003, 1_004, got(Some("v0"))));
        history
    }

    #[test]
    fn search_budget_yields_unknown_instead_of_hanging() {
        assert_eq!(
            check(&pathological(30)),
            CheckResult::Unknown { key: b("k") }
        );
        // A budget that suffices for a small instance gives the real verdict.
        assert!(matches!(
            check_with_budget(&pathological(6), 1_000_000),
            CheckResult::NotLinearizable { .. }
        ));
        assert_eq!(
            check_with_budget(&pathological(6), 10),
            CheckResult::Unknown { key: b("k") }
        );
    }

    /// Runs random clients against a real sequential store: each op takes
    /// effect at one instant inside its window, so the history is linearizable
    /// by construction. Some replies are lost, some ops are abandoned and take
    /// effect later or never. Every written value is unique.
    fn generate(seed: u64, clients: usize, keys: usize, ops: usize) -> Vec<Operation> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut store: HashMap<Vec<u8>, (Vec<u8>, u64)> = HashMap::new();
        let mut history: Vec<Operation> = Vec::new();
        // Per client: the op in flight and its result once it has taken effect.
        let mut inflight: Vec<Option<(usize, Option<KvReturn>)>> = vec![None; clients];
        let mut abandoned: Vec<usize> = Vec::new();
        let mut time = 0;
        while history.len() < ops || inflight.iter().any(Option::is_some) {
            time += 1;
            if !abandoned.is_empty() && rng.random_bool(0.02) {
                let op = abandoned.swap_remove(rng.random_range(0..abandoned.len()));
                if rng.random_bool(0.5) {
                    run(&mut store, &history[op].call);
                }
                continue;
            }
            let client = rng.random_range(0..clients);
            match inflight[client].take() {
                None if history.len() < ops => {
                    let key = format!("k{}", rng.random_range(0..keys)).into_bytes();
                    let value = format!("v{}", history.len()).into_bytes();
                    let call = match rng.random_range(0..10) {
                        0..4 => KvCall::Put { key, value },
                        4..7 => KvCall::Get { key },
                        7 if rng.random_bool(0.3) => KvCall::DeletePrefix {
                            // "k1" also covers k10.. when there are that many.
                            prefix: key[..rng.random_range(1..=key.len())].to_vec(),
                        },
                        7 => KvCall::Delete { key },
                        _ => {
                            let current = store.get(&key).map_or(0, |(_, v)| *v);
                            let expected_version = if rng.random_bool(0.5) {
                                current
                            } else {
                                rng.random_range(0..3)
                            };
                            KvCall::Cas {
                                key,
                                expected_version,
                                value,
                            }
                        }
                    };
                    inflight[client] = Some((history.len(), None));
                    history.push(Operation {
                        client: client as u64,
                        call,
                        invoked: time,
                        completed: None,
                    });
                }
                None => {}
                Some((op, None)) if rng.random_bool(0.03) => abandoned.push(op),
                Some((op, None)) => {
                    inflight[client] = Some((op, Some(run(&mut store, &history[op].call))))
                }
                // The reply is lost: the client only sees a timeout.
                Some((_, Some(_))) if rng.random_bool(0.03) => {}
                Some((op, Some(ret))) => history[op].completed = Some((time, ret)),
            }
        }
        history
    }

    fn run(store: &mut HashMap<Vec<u8>, (Vec<u8>, u64)>, call: &KvCall) -> KvReturn {
        if let KvCall::DeletePrefix { prefix } = call {
            store.retain(|key, _| !key.starts_with(prefix));
            return KvReturn::DeletePrefix;
        }
        let key = call.key().to_vec();
        let version = store.get(&key).map_or(0, |(_, v)| *v);
        match call {
            KvCall::Put { value, .. } => {
                store.insert(key, (value.clone(), version + 1));
                KvReturn::Put
            }
            KvCall::Get { .. } => KvReturn::Get(store.get(&key).map(|(v, _)| v.clone())),
            KvCall::Delete { .. } => KvReturn::Delete {
                deleted: store.remove(&key).is_some(),
            },
            KvCall::Cas {
                expected_version,
                value,
                ..
            } => {
                let ok = *expected_version == version;
                if ok {
                    store.insert(key, (value.clone(), version + 1));
                }
                KvReturn::Cas { ok }
            }
            KvCall::DeletePrefix { .. } => KvReturn::DeletePrefix,
        }
    }

    /// True if the get at `g` returning `value` is refuted by real time alone:
    /// the only write of `value` completed before some acknowledged
    /// overwrite or delete began, which itself completed before the get began.
    fn provably_stale(history: &[Operation], g: usize, value: &[u8]) -> bool {
        let key = history[g].call.key();
        let writer = history.iter().find(|op| match &op.call {
            KvCall::Put { value: v, .. } | KvCall::Cas { value: v, .. } => v == value,
            _ => false,
        });
        let Some(Operation {
            completed: Some((written, ret)),
            ..
        }) = writer
        else {
            return false;
        };
        if *ret == (KvReturn::Cas { ok: false }) {
            return false;
        }
        history.iter().any(|op| {
            let mutates = match &op.completed {
                Some((_, KvReturn::Cas { ok })) => *ok,
                Some((_, KvReturn::Get(_))) | None => false,
                Some(_) => true,
            };
            mutates
                && op.call.touches(key)
                && op.invoked > *written
                && op
                    .completed
                    .as_ref()
                    .is_some_and(|(t, _)| *t < history[g].invoked)
        })
    }

    #[test]
    fn randomized_real_executions_are_linearizable_and_corruptions_are_caught() {
        let (mut corrupted, mut caught, mut unknown, mut provable) = (0, 0, 0, 0);
        for seed in 0..300 {
            let (clients, keys) = if seed % 4 == 0 { (10, 3) } else { (10, 10) };
            let history = generate(seed, clients, keys, 300);
            assert_eq!(check(&history), CheckResult::Linearizable, "seed {seed}");

            let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].completed, Some((_, KvReturn::Get(_)))))
                .collect();
            let g = reads[rng.random_range(0..reads.len())];
            let mut ghost = history.clone();
            if let Some((_, ret)) = ghost[g].completed.as_mut() {
                *ret = got(Some("never written"));
            }
            let verdict = check(&ghost);
            assert!(
                matches!(verdict, CheckResult::NotLinearizable { .. }),
                "seed {seed}: a read of a value never written went unnoticed: {verdict:?}"
            );

            // Swap in another value written to the same key: usually wrong, sometimes provably.
            let key = history[g].call.key();
            let values: Vec<&[u8]> = history
                .iter()
                .filter(|op| op.call.key() == key)
                .filter_map(|op| match &op.call {
                    KvCall::Put { value, .. } | KvCall::Cas { value, .. } => Some(value.as_slice()),
                    _ => None,
                })
                .collect();
            if values.is_empty() {
                continue;
            }
            let value = values[rng.random_range(0..values.len())].to_vec();
            let mut swapped = history.clone();
            let Some((_, ret)) = swapped[g].completed.as_mut() else {
                continue;
            };
            if *ret == KvReturn::Get(Some(value.clone())) {
                continue;
            }
            *ret = KvReturn::Get(Some(value.clone()));
            corrupted += 1;
            let verdict = check(&swapped);
            if provably_stale(&history, g, &value) {
                provable += 1;
                assert_ne!(
                    verdict,
                    CheckResult::Linearizable,
                    "seed {seed}: stale read accepted"
                );
            }
            match verdict {
                CheckResult::NotLinearizable { .. } => caught += 1,
                CheckResult::Unknown { .. } => unknown += 1,
                CheckResult::Linearizable => {}
            }
        }
        eprintln!("{caught} caught, {unknown} unknown, {provable} provable of {corrupted}");
        assert!(
            provable > 20,
            "the provable cases are too few to mean anything"
        );
        // Exhausting the budget should be rare, and only on the hot-key histories.
        assert!(
            unknown * 50 <= corrupted,
            "{unknown} of {corrupted} ran out of budget"
        );
        assert!(
            caught * 2 > corrupted,
            "only {caught} of {corrupted} swapped reads caught"
        );
    }
}
