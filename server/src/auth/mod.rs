//! Client authentication and per-prefix authorization.
//!
//! The rules live in the replicated state, so every replica enforces the
//! same ones: roles and API tokens are records under a reserved key prefix
//! ([`AUTH_PREFIX`]) of the key-value store, written only by
//! [`crate::kv::Op::Auth`] changes chosen through the log. Keeping them as
//! keys means snapshots, backups, archives and the replicas' digest
//! comparison carry them without a format of their own; clients can
//! neither read nor write that prefix through the KV API. [`AuthState`] is
//! each store's decoded copy of those keys, rebuilt whenever a store is
//! restored and updated by the same apply that writes them.
//!
//! Checks happen at three points, each against state that is fresh enough
//! for the guarantee "a change takes effect everywhere once it is chosen":
//! - writes by a token are proposed as [`crate::kv::Op::As`], and the
//!   permission is checked again *when the op is applied*: a write chosen
//!   after a revocation is refused on every replica, deterministically;
//! - linearizable reads check inside the read, on state that reflects every
//!   change chosen before the read began;
//! - watches are checked when they start (after a read barrier) and, for a
//!   token, again before each event whenever the replica's rules may have
//!   changed (an auth change applied, a snapshot installed): the replica
//!   has applied every event it sends, so no event after a revocation is
//!   delivered.
//!
//! A `consistency=local` read is the exception: it is checked against the
//! replica it reaches, which may not have applied a revocation yet, as it
//! may not have applied a write.
//!
//! [`gate`] is the HTTP side: who is calling, the failed-attempt limiter.
//! [`token`] is the token format and its hashing.

pub mod gate;
pub mod token;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::{Op, TxnOp};

/// Keys starting with this are the store's own; the KV API refuses them.
pub const SYSTEM_PREFIX: &[u8] = b"\0phxkv/";
/// Where the auth records live.
pub const AUTH_PREFIX: &[u8] = b"\0phxkv/auth/";
const ROLE_PREFIX: &[u8] = b"\0phxkv/auth/role/";
const TOKEN_PREFIX: &[u8] = b"\0phxkv/auth/token/";
/// Present while auth is on for the whole cluster.
const ENABLED_KEY: &[u8] = b"\0phxkv/auth/enabled";

/// Most roles, tokens, permissions per role and roles per token: the whole
/// auth state is read on every check, so it stays small.
pub const MAX_ROLES: usize = 256;
pub const MAX_TOKENS: usize = 10_000;
pub const MAX_PERMISSIONS: usize = 64;
pub const MAX_TOKEN_ROLES: usize = 16;
/// Longest role name and token name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest permission prefix, in bytes (the longest key).
pub const MAX_PREFIX: usize = 4096;

/// Whether `key` is in the store's reserved prefix.
pub fn is_system_key(key: &[u8]) -> bool {
    key.starts_with(SYSTEM_PREFIX)
}

/// Whether `key` is an auth record.
pub fn is_auth_key(key: &[u8]) -> bool {
    key.starts_with(AUTH_PREFIX)
}

/// Whether a watch on `prefix` gets the event of a change to `key`: the
/// keys under the prefix, never the store's own, except that auth changes
/// go to every watch (as markers: the API re-checks the watch's permission
/// there and never forwards them).
pub fn watch_delivers(key: &[u8], prefix: &[u8]) -> bool {
    if is_system_key(key) {
        is_auth_key(key)
    } else {
        key.starts_with(prefix)
    }
}

/// Access to keys starting with `prefix` (every key when empty).
// No `deny_unknown_fields` on records: a replica of an older version must
// decode a record a newer one wrote, ignoring fields it does not know,
// instead of dropping it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"prefix": "app/", "read": true, "write": false}))]
pub struct Permission {
    /// The key prefix, as text; `""` covers every key.
    pub prefix: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
}

/// A named set of permissions. (`AuthRole` in the API documents, where
/// `Role` is a member's part in quorums.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = AuthRole)]
pub struct Role {
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Membership changes, auth management, backups and snapshots, and
    /// every key.
    #[serde(default)]
    pub admin: bool,
}

/// An API token as the store keeps it: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenRecord {
    /// Who or what the token is for.
    pub name: String,
    /// The roles it has; names of roles that do not exist grant nothing.
    pub roles: Vec<String>,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
}

/// A change to the auth rules, chosen through the log like any write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthChange {
    /// Creates the role or replaces its permissions.
    PutRole {
        name: String,
        role: Role,
    },
    DeleteRole {
        name: String,
    },
    /// Adds a token; its id must be new.
    CreateToken {
        id: String,
        token: TokenRecord,
    },
    /// Revokes a token.
    DeleteToken {
        id: String,
    },
    /// Replaces a token's roles.
    SetTokenRoles {
        id: String,
        roles: Vec<String>,
    },
    /// Every replica requires a credential on its client port, whether or
    /// not it runs with `--auth`.
    Enable,
    /// Only replicas that run with `--auth` require a credential.
    Disable,
}

/// Why a request or an op was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The token does not exist (any more) (401).
    Unauthenticated,
    /// The token's roles do not allow it (403).
    PermissionDenied,
    /// The change is malformed or over a bound (400).
    Invalid,
    /// The role or token named does not exist (404).
    NotFound,
    /// The change conflicts with the current state, e.g. a duplicate id (409).
    Conflict,
}

/// A refusal and its reason, for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, message)
    }
}

/// What a request needs to be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Reading one key.
    Read(&'a [u8]),
    /// Reading every key under a prefix (a listing or a watch).
    ReadPrefix(&'a [u8]),
    /// Writing one key.
    Write(&'a [u8]),
    /// Writing (deleting) every key under a prefix.
    WritePrefix(&'a [u8]),
    /// The admin permission.
    Admin,
}

impl Need<'_> {
    fn describe(&self) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let under = |p: &[u8]| {
            if p.is_empty() {
                "every key".to_string()
            } else {
                format!("every key under {:?}", text(p))
            }
        };
        match self {
            Need::Read(k) => format!("read on {:?}", text(k)),
            Need::ReadPrefix(p) => format!("read on {}", under(p)),
            Need::Write(k) => format!("write on {:?}", text(k)),
            Need::WritePrefix(p) => format!("write on {}", under(p)),
            Need::Admin => "the admin permission".into(),
        }
    }
}

impl Permission {
    fn covers(&self, need: &Need) -> bool {
        let p = self.prefix.as_bytes();
        match need {
            Need::Read(key) => self.read && key.starts_with(p),
            Need::ReadPrefix(prefix) => self.read && prefix.starts_with(p),
            Need::Write(key) => self.write && key.starts_with(p),
            Need::WritePrefix(prefix) => self.write && prefix.starts_with(p),
            Need::Admin => false,
        }
    }
}

/// Everything `op` touches, as needs: writes need write, compares and
/// transaction reads need read, and a conditional put or delete needs read
/// too (its failure tells the key's current version).
pub fn needs(op: &Op) -> Vec<Need<'_>> {
    match op {
        Op::Put { key, expect, .. } | Op::Delete { key, expect } => {
            let mut out = vec![Need::Write(key)];
            if expect.is_some() {
                out.push(Need::Read(key));
            }
            out
        }
        Op::Txn(txn) => {
            let mut out: Vec<Need> = txn.compare.iter().map(|c| Need::Read(&c.key)).collect();
            for op in txn.success.iter().chain(&txn.failure) {
                out.push(match op {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key } => Need::Write(key),
                    TxnOp::Get { key } => Need::Read(key),
                });
            }
            out
        }
        Op::DeletePrefix { prefix, .. } => vec![Need::WritePrefix(prefix)],
        Op::Auth(_)
        | Op::As { .. }
        | Op::Anonymous { .. }
        | Op::Once { .. }
        | Op::Timeline { .. } => {
            vec![Need::Admin]
        }
        // Any token may hold leases; a revoke is also checked against the
        // keys it deletes, where it is applied (they are known only there).
        Op::Lease(_) => Vec::new(),
        Op::Leased { op, .. } => needs(op),
    }
}

/// What a caller without a credential is told once auth is on for the
/// cluster: by a read's check, or where an anonymous write is applied.
pub fn anonymous_refusal() -> Refusal {
    Refusal::new(
        RefusalKind::Unauthenticated,
        "auth was enabled for this cluster: send Authorization: Bearer <token>",
    )
}

/// The keys a client op names, for refusing the reserved prefix.
pub fn touches_system_key(op: &Op) -> bool {
    match op {
        Op::Put { key, .. } | Op::Delete { key, .. } => is_system_key(key),
        // A shorter prefix (the empty one) skips the store's keys.
        Op::DeletePrefix { prefix, .. } => is_system_key(prefix),
        Op::Txn(txn) => {
            txn.compare.iter().any(|c| is_system_key(&c.key))
                || txn.success.iter().chain(&txn.failure).any(|o| match o {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => {
                        is_system_key(key)
                    }
                })
        }
        Op::Auth(_) | Op::Lease(_) | Op::Timeline { .. } => false,
        Op::As { op, .. } | Op::Leased { op, .. } | Op::Anonymous { op } | Op::Once { op, .. } => {
            touches_system_key(op)
        }
    }
}

/// The auth records of one store, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    roles: BTreeMap<String, Role>,
    tokens: BTreeMap<String, TokenRecord>,
    /// Auth is on for the whole cluster ([`AuthChange::Enable`]).
    enabled: bool,
}

/// One key write an auth change makes: a put (`Some`) or a delete.
pub type RecordWrite = (Vec<u8>, Option<Vec<u8>>);

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

fn token_key(id: &str) -> Vec<u8> {
    [TOKEN_PREFIX, id.as_bytes()].concat()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, bools and vectors always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Checks a role or token name: 1 to [`MAX_NAME`] bytes of letters,
/// digits, `.`, `_`, `-`, `@` and `:`.
pub fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::invalid(format!(
            "{what} {}: use 1 to {MAX_NAME} letters, digits, '.', '_', '-', '@' or ':'",
            crate::text::quoted(name)
        )))
    }
}

fn check_role(role: &Role) -> Result<(), Refusal> {
    if role.permissions.len() > MAX_PERMISSIONS {
        return Err(Refusal::invalid(format!(
            "a role has at most {MAX_PERMISSIONS} permissions"
        )));
    }
    for p in &role.permissions {
        if p.prefix.len() > MAX_PREFIX {
            return Err(Refusal::invalid(format!(
                "a permission prefix is at most {MAX_PREFIX} bytes"
            )));
        }
        if !p.read && !p.write {
            return Err(Refusal::invalid(format!(
                "the permission on {:?} grants neither read nor write",
                p.prefix
            )));
        }
    }
    Ok(())
}

fn check_token_roles(roles: &[String]) -> Result<(), Refusal> {
    if roles.len() > MAX_TOKEN_ROLES {
        return Err(Refusal::invalid(format!(
            "a token has at most {MAX_TOKEN_ROLES} roles"
        )));
    }
    roles.iter().try_for_each(|r| check_name("role", r))
}

impl AuthState {
    /// The state the auth records among `entries` describe. Records that
    /// do not decode are skipped (the same way on every replica).
    pub fn load<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> AuthState {
        let mut state = AuthState::default();
        for (key, value) in entries {
            state.note(key, Some(value));
        }
        state
    }

    /// Follows one write to an auth record.
    pub fn note(&mut self, key: &[u8], value: Option<&[u8]>) {
        let name = |prefix: &[u8]| {
            key.strip_prefix(prefix)
                .and_then(|n| std::str::from_utf8(n).ok())
                .map(str::to_owned)
        };
        if let Some(role) = name(ROLE_PREFIX) {
            match value.and_then(|v| serde_json::from_slice(v).ok()) {
                Some(r) => self.roles.insert(role, r),
                None => self.roles.remove(&role),
            };
        } else if let Some(id) = name(TOKEN_PREFIX) {
            match value.and_then(|v| serde_json::from_slice(v).ok()) {
                Some(t) => self.tokens.insert(id, t),
                None => self.tokens.remove(&id),
            };
        } else if key == ENABLED_KEY {
            self.enabled = value.is_some();
        }
    }

    /// The record writes that make `change`, or why it cannot be made.
    /// Deterministic: the same state and change give the same answer on
    /// every replica.
    pub fn plan(&self, change: &AuthChange) -> Result<Vec<RecordWrite>, Refusal> {
        match change {
            AuthChange::PutRole { name, role } => {
                check_name("role", name)?;
                check_role(role)?;
                if !self.roles.contains_key(name) && self.roles.len() >= MAX_ROLES {
                    return Err(Refusal::invalid(format!("at most {MAX_ROLES} roles")));
                }
                Ok(vec![(role_key(name), Some(encode(role)))])
            }
            AuthChange::DeleteRole { name } => {
                if !self.roles.contains_key(name) {
                    return Err(Refusal::new(
                        RefusalKind::NotFound,
                        format!("no role {}", crate::text::quoted(name)),
                    ));
                }
                Ok(vec![(role_key(name), None)])
            }
            AuthChange::CreateToken { id, token } => {
                token::check_id(id)?;
                check_name("token name", &token.name)?;
                check_token_roles(&token.roles)?;
                if token.secret_sha256.len() != 64
                    || !token.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(Refusal::invalid("secret_sha256 must be 64 hex digits"));
                }
                if self.tokens.contains_key(id) {
                    return Err(Refusal::new(
                        RefusalKind::Conflict,
                        format!("a token with id {id} exists"),
                    ));
                }
                if self.tokens.len() >= MAX_TOKENS {
                    return Err(Refusal::invalid(format!("at most {MAX_TOKENS} tokens")));
                }
                Ok(vec![(token_key(id), Some(encode(token)))])
            }
            AuthChange::DeleteToken { id } => {
                self.token_or_not_found(id)?;
                Ok(vec![(token_key(id), None)])
            }
            AuthChange::SetTokenRoles { id, roles } => {
                check_token_roles(roles)?;
                let mut token = self.token_or_not_found(id)?.clone();
                token.roles = roles.clone();
                Ok(vec![(token_key(id), Some(encode(&token)))])
            }
            // Already so: nothing to write (the change still gets a
            // revision, and answers like the first one).
            AuthChange::Enable if self.enabled => Ok(Vec::new()),
            AuthChange::Enable => Ok(vec![(ENABLED_KEY.to_vec(), Some(b"true".to_vec()))]),
            AuthChange::Disable if !self.enabled => Ok(Vec::new()),
            AuthChange::Disable => Ok(vec![(ENABLED_KEY.to_vec(), None)]),
        }
    }

    fn token_or_not_found(&self, id: &str) -> Result<&TokenRecord, Refusal> {
        self.tokens
            .get(id)
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("no token {id}")))
    }

    /// The token `id` of a caller let in with it, or why it no longer is:
    /// the token was revoked since.
    pub fn signed_in(&self, id: &str) -> Result<&TokenRecord, Refusal> {
        self.tokens
            .get(id)
            .ok_or_else(|| Refusal::new(RefusalKind::Unauthenticated, "the token was revoked"))
    }

    /// Whether the token `id` may do what `need` says.
    pub fn authorize(&self, id: &str, need: Need) -> Result<(), Refusal> {
        let token = self.signed_in(id)?;
        let roles = || token.roles.iter().filter_map(|r| self.roles.get(r));
        if roles().any(|r| r.admin) {
            return Ok(());
        }
        if roles().any(|r| r.permissions.iter().any(|p| p.covers(&need))) {
            return Ok(());
        }
        Err(Refusal::new(
            RefusalKind::PermissionDenied,
            format!(
                "token {id} ({}) lacks {}; its roles: {}",
                token.name,
                need.describe(),
                if token.roles.is_empty() {
                    "none".to_string()
                } else {
                    token.roles.join(", ")
                }
            ),
        ))
    }

    /// Every need of `op` (see [`needs`]).
    pub fn authorize_op(&self, id: &str, op: &Op) -> Result<(), Refusal> {
        needs(op)
            .into_iter()
            .try_for_each(|need| self.authorize(id, need))
    }

    /// The token `id`, if it exists.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> &BTreeMap<String, TokenRecord> {
        &self.tokens
    }

    /// Every role, by name.
    pub fn roles(&self) -> &BTreeMap<String, Role> {
        &self.roles
    }

    /// Whether auth is on for the whole cluster: then every replica
    /// requires a credential, with or without `--auth`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Compare, CompareOp, CompareTarget, Txn};

    fn apply(state: &mut AuthState, change: AuthChange) -> Result<(), Refusal> {
        for (key, value) in state.plan(&change)? {
            state.note(&key, value.as_deref());
        }
        Ok(())
    }

    #[test]
    fn a_refused_name_or_id_is_quoted_cut_short() {
        let short = check_name("role", "bad name").expect_err("a space");
        assert!(
            short.message.starts_with("role \"bad name\": use 1 to"),
            "{}",
            short.message
        );
        let long = "a".repeat(100_000);
        let refused = check_name("token name", &long).expect_err("too long");
        let shown = crate::text::quoted(&long);
        assert!(
            refused
                .message
                .starts_with(&format!("token name {shown}: ")),
            "{}",
            refused.message
        );
        assert!(refused.message.len() < 300, "{}", refused.message);
        let id = token::check_id(&long).expect_err("not an id");
        assert!(id.message.len() < 300, "{}", id.message);
    }

    #[test]
    fn enabling_auth_for_the_cluster_is_a_record_and_idempotent() {
        let mut s = AuthState::default();
        assert!(!s.enabled());
        assert_eq!(s.plan(&AuthChange::Disable), Ok(Vec::new()), "already off");
        apply(&mut s, AuthChange::Enable).expect("enable");
        assert!(s.enabled());
        assert_eq!(s.plan(&AuthChange::Enable), Ok(Vec::new()), "already on");
        // A store rebuilt from its keys (a snapshot, a restart) knows it.
        let rebuilt = AuthState::load(std::iter::once((ENABLED_KEY, b"true".as_slice())));
        assert!(rebuilt.enabled());
        assert!(is_auth_key(ENABLED_KEY), "watches see it as an auth change");
        apply(&mut s, AuthChange::Disable).expect("disable");
        assert!(!s.enabled());
    }

    fn reader_of_app() -> AuthState {
        let mut s = AuthState::default();
        let role = Role {
            permissions: vec![Permission {
                prefix: "app/".into(),
                read: true,
                write: false,
            }],
            admin: false,
        };
        apply(
            &mut s,
            AuthChange::PutRole {
                name: "app-reader".into(),
                role,
            },
        )
        .expect("role");
        apply(
            &mut s,
            AuthChange::CreateToken {
                id: "0123456789abcdef".into(),
                token: TokenRecord {
                    name: "ci".into(),
                    roles: vec!["app-reader".into()],
                    secret_sha256: "0".repeat(64),
                },
            },
        )
        .expect("token");
        s
    }

    const ID: &str = "0123456789abcdef";

    #[test]
    fn a_prefix_permission_covers_keys_and_narrower_prefixes_only() {
        let s = reader_of_app();
        assert_eq!(s.authorize(ID, Need::Read(b"app/x")), Ok(()));
        assert_eq!(s.authorize(ID, Need::ReadPrefix(b"app/sub/")), Ok(()));
        let denied = |need| s.authorize(ID, need).map_err(|r| r.kind);
        assert_eq!(
            denied(Need::Write(b"app/x")),
            Err(RefusalKind::PermissionDenied)
        );
        assert_eq!(
            denied(Need::Read(b"other/x")),
            Err(RefusalKind::PermissionDenied)
        );
        // A listing of everything is wider than app/.
        assert_eq!(
            denied(Need::ReadPrefix(b"")),
            Err(RefusalKind::PermissionDenied)
        );
        assert_eq!(
            denied(Need::ReadPrefix(b"ap")),
            Err(RefusalKind::PermissionDenied)
        );
        assert_eq!(denied(Need::Admin), Err(RefusalKind::PermissionDenied));
    }

    #[test]
    fn a_revoked_token_and_a_deleted_role_grant_nothing() {
        let mut s = reader_of_app();
        apply(
            &mut s,
            AuthChange::DeleteRole {
                name: "app-reader".into(),
            },
        )
        .expect("delete");
        assert_eq!(
            s.authorize(ID, Need::Read(b"app/x")).map_err(|r| r.kind),
            Err(RefusalKind::PermissionDenied)
        );
        apply(&mut s, AuthChange::DeleteToken { id: ID.into() }).expect("revoke");
        assert_eq!(
            s.authorize(ID, Need::Read(b"app/x")).map_err(|r| r.kind),
            Err(RefusalKind::Unauthenticated)
        );
    }

    #[test]
    fn an_admin_role_allows_everything() {
        let mut s = reader_of_app();
        let admin = Role {
            permissions: vec![],
            admin: true,
        };
        apply(
            &mut s,
            AuthChange::PutRole {
                name: "root".into(),
                role: admin,
            },
        )
        .expect("role");
        apply(
            &mut s,
            AuthChange::SetTokenRoles {
                id: ID.into(),
                roles: vec!["root".into()],
            },
        )
        .expect("grant");
        assert_eq!(s.authorize(ID, Need::Admin), Ok(()));
        assert_eq!(s.authorize(ID, Need::Write(b"anything")), Ok(()));
    }

    #[test]
    fn a_transaction_needs_read_on_compares_and_gets_and_write_on_writes() {
        let s = reader_of_app();
        let txn = |success| {
            Op::Txn(Txn {
                compare: vec![Compare {
                    key: b"app/a".to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(1),
                }],
                success,
                failure: vec![TxnOp::Get {
                    key: b"app/b".to_vec(),
                }],
            })
        };
        assert_eq!(s.authorize_op(ID, &txn(vec![])), Ok(()));
        let writes = txn(vec![TxnOp::Delete {
            key: b"app/c".to_vec(),
        }]);
        assert_eq!(
            s.authorize_op(ID, &writes).map_err(|r| r.kind),
            Err(RefusalKind::PermissionDenied)
        );
        let reads_other = txn(vec![TxnOp::Get {
            key: b"other/c".to_vec(),
        }]);
        assert!(s.authorize_op(ID, &reads_other).is_err());
    }

    #[test]
    fn changes_are_checked_before_anything_is_written() {
        let s = reader_of_app();
        let kind = |c| s.plan(&c).map(|_| ()).map_err(|r| r.kind);
        assert_eq!(
            kind(AuthChange::PutRole {
                name: "bad name".into(),
                role: Role::default()
            }),
            Err(RefusalKind::Invalid)
        );
        let dup = AuthChange::CreateToken {
            id: ID.into(),
            token: TokenRecord {
                name: "again".into(),
                roles: vec![],
                secret_sha256: "1".repeat(64),
            },
        };
        assert_eq!(kind(dup), Err(RefusalKind::Conflict));
        assert_eq!(
            kind(AuthChange::DeleteToken {
                id: "fedcba9876543210".into()
            }),
            Err(RefusalKind::NotFound)
        );
        let empty = Role {
            permissions: vec![Permission {
                prefix: "x".into(),
                read: false,
                write: false,
            }],
            admin: false,
        };
        assert_eq!(
            kind(AuthChange::PutRole {
                name: "r".into(),
                role: empty
            }),
            Err(RefusalKind::Invalid)
        );
    }

    #[test]
    fn the_state_reloads_from_its_records() {
        let s = reader_of_app();
        let records: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (role_key("app-reader"), encode(&s.roles["app-reader"])),
            (token_key(ID), encode(&s.tokens[ID])),
        ];
        let loaded = AuthState::load(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert_eq!(loaded, s);
    }

    #[test]
    fn watches_get_auth_markers_but_never_other_system_keys() {
        assert!(watch_delivers(b"\0phxkv/auth/token/x", b"app/"));
        assert!(!watch_delivers(b"\0phxkv/other", b""));
        assert!(watch_delivers(b"app/x", b"app/"));
        assert!(!watch_delivers(b"other/x", b"app/"));
    }
}
