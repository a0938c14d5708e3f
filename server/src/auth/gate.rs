//! The HTTP side of auth: who is calling ([`Caller`]), the middleware that
//! finds out ([`authenticate`]), and the failed-attempt limiter.
//!
//! With auth on (`phxkv serve --auth`), every route but the probes, the
//! metrics and the documentation needs `Authorization: Bearer <token>`:
//! either an API token (`phxkv_<id>_<secret>`, checked against the
//! replicated records) or the cluster token, which is the bootstrap admin
//! credential (a Secret in Kubernetes). A caller whose address (an IPv6
//! caller's /64) sent [`MAX_FAILURES`] wrong tokens within [`WINDOW`] gets
//! 429 until the window ends, even with the right cluster token, so
//! guessing is slow from any one address; a valid API token still passes,
//! since its 256-bit secret cannot have been guessed.
//!
//! With `--client-cert-identity` (on a client port with
//! `--client-cert-auth`), a request without a bearer token acts as the API
//! token its client certificate names: the token whose id is the
//! certificate's subject common name (see [`crate::tls::client_name`]). The
//! token's roles are its rights, and revoking the token shuts the
//! certificate out on every replica as it would the token's secret, since
//! every check after the gate is by the token's id. Ids, unlike names, are
//! random and never given to another token, so a revoked token's
//! certificate stays out, and certificates the CA issued for other uses
//! (a replica's, say) name no token. A bearer token, when sent, is used
//! instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Need, Refusal, token};
use crate::api::error::{ApiError, ErrorCode};
use crate::api::service::{Consistency, Service};
use crate::kv::{Op, Store};
use crate::telemetry::metrics::Metrics;

/// Wrong tokens one address may send within [`WINDOW`] before it is refused.
pub const MAX_FAILURES: u32 = 10;
/// The limiter's window, from an address's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long an address that presented the right cluster token on the peer
/// port stays exempt there from the limit (see [`Gate::check_peer_token`]);
/// a replica presents it several times a second.
const PROVEN_FOR: Duration = Duration::from_secs(600);
/// Addresses the limiter remembers; beyond that the oldest is forgotten.
const MAX_TRACKED: usize = 10_000;

/// The address a connection came from, as the limiter sees it: set on
/// every request by `crate::net::serve`.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The name a connection's client certificate gives its holder (see
/// [`crate::tls::client_name`]): set by `crate::net::serve` on every request
/// of a connection that presented one, which the port verified against its
/// CA during the handshake.
#[derive(Clone, Debug)]
pub struct ClientCert(pub Arc<str>);

/// Keys of a lease that [`Caller::check_op`] checks before a token attaches
/// another, at most (as many as a renewal checks).
pub const LEASE_KEYS_CHECKED: usize = 1000;

/// Who sent a request, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off on this node: everyone may do everything, until the
    /// node applies an [`AuthChange::Enable`](crate::auth::AuthChange).
    Anyone,
    /// The bootstrap admin credential (the cluster token).
    Admin,
    /// An API token, by id; its rights are looked up at each check.
    Token { id: String },
}

impl Caller {
    /// Whether the caller may do what `need` says, by `store`'s rules.
    ///
    /// A caller let in while auth was off is refused by a state in which
    /// auth is on for the cluster: a linearizable read that begins after an
    /// enable was chosen sees it, whatever the replica knew when the
    /// request arrived.
    pub fn check(&self, store: &Store, need: Need) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => anonymous(store),
            Caller::Admin => Ok(()),
            Caller::Token { id } => store.auth().authorize(id, need),
        }
    }

    /// Whether the caller may apply `op`, by `store`'s rules.
    ///
    /// A token may attach keys to a lease only if it may write every key
    /// already attached to it (as etcd asks of a put with a lease).
    /// Renewing and revoking a lease need that too, so without it a token
    /// that may write only `evil/` could attach `evil/x` to another
    /// client's lease and make that client's keep-alives fail, and its lock
    /// or leadership end with the lease. Checked where the op is admitted
    /// only: an earlier version applies the same op without it, and the
    /// replicas of a rolling upgrade must apply each chosen op alike. Keys
    /// past the first [`LEASE_KEYS_CHECKED`] of a lease are not looked at,
    /// which bounds the check's cost.
    pub fn check_op(&self, store: &Store, op: &Op) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => anonymous(store),
            Caller::Admin => Ok(()),
            Caller::Token { id } => {
                store.auth().authorize_op(id, op)?;
                if let Op::Leased { lease, .. } = op {
                    store.may_hold_lease(id, *lease)?;
                    for key in store.lease_keys(*lease, LEASE_KEYS_CHECKED) {
                        store.auth().authorize(id, Need::Write(&key))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// `op` as it is proposed: a token's op carries the token, so that the
    /// permission is checked again where the op is chosen; an anonymous op
    /// says so, so that it is refused where it is chosen after an
    /// `auth enable` (once the cluster's members all decode that, see
    /// [`Service::anonymous_ops`]).
    pub fn guard<S: Service>(&self, svc: &S, op: Op) -> Op {
        match self {
            Caller::Anyone if svc.anonymous_ops() => Op::Anonymous { op: Box::new(op) },
            Caller::Anyone | Caller::Admin => op,
            Caller::Token { id } => Op::As {
                token: id.clone(),
                op: Box::new(op),
            },
        }
    }

    /// Checks `op` against this replica's rules, so that a write the caller
    /// may not make is refused without a trip through the log (the apply
    /// checks again), and returns it ready to propose.
    pub async fn authorize_write<S: Service>(&self, svc: &S, op: Op) -> Result<Op, ApiError> {
        if !matches!(self, Caller::Token { .. }) {
            return Ok(self.guard(svc, op));
        }
        let check = |consistency| {
            let me = self.clone();
            let op = op.clone();
            svc.read(consistency, move |store| me.check_op(store, &op))
        };
        // A grant made a moment ago may not have reached this replica:
        // before refusing, look again at rules that reflect every change
        // chosen so far.
        if check(Consistency::Local { min_revision: None })
            .await?
            .is_err()
        {
            check(Consistency::Linearizable).await??;
        }
        Ok(self.guard(svc, op))
    }

    /// Requires the admin permission, by rules that reflect every change
    /// chosen before the call.
    pub async fn require_admin<S: Service>(&self, svc: &S) -> Result<(), ApiError> {
        if !matches!(self, Caller::Token { .. }) {
            return Ok(());
        }
        let me = self.clone();
        svc.read(Consistency::Linearizable, move |store| {
            me.check(store, Need::Admin)
        })
        .await??;
        Ok(())
    }

    /// Confirms, by rules that reflect every change chosen before the
    /// call, that the caller is still let in at all: auth still off for a
    /// caller without a credential, its token not revoked. For what is
    /// answered without going through the log (lease keep-alives), which
    /// no apply checks again: this replica may not have applied an
    /// `auth enable` or a revoke that the cluster has already chosen.
    pub async fn confirm<S: Service>(&self, svc: &S) -> Result<(), ApiError> {
        if matches!(self, Caller::Admin) {
            return Ok(());
        }
        let me = self.clone();
        svc.read(Consistency::Linearizable, move |store| me.let_in(store))
            .await??;
        Ok(())
    }

    /// Confirms the caller (as [`Caller::confirm`]) and that it may write
    /// every key attached to the leases `ids`: what revoking them needs,
    /// since their keys go with them. A keep-alive is never written to the
    /// log, so it is checked here, where it arrives. Without this, a token
    /// that may only read could keep another client's lock or leadership
    /// alive for ever. Keys past the first `max_keys` of a lease are not
    /// looked at, which bounds the check's cost.
    pub async fn confirm_renewal<S: Service>(
        &self,
        svc: &S,
        ids: Vec<u64>,
        max_keys: usize,
    ) -> Result<(), ApiError> {
        if matches!(self, Caller::Admin) {
            return Ok(());
        }
        let me = self.clone();
        svc.read(Consistency::Linearizable, move |store| {
            me.let_in(store)?;
            // Let in without a credential: auth is off here and for the
            // cluster, and anyone may write anything.
            if matches!(me, Caller::Anyone) {
                return Ok(());
            }
            for id in ids {
                if let Caller::Token { id: token } = &me {
                    store.may_hold_lease(token, id)?;
                }
                for key in store.lease_keys(id, max_keys) {
                    me.check(store, Need::Write(&key))?;
                }
            }
            Ok::<_, Refusal>(())
        })
        .await??;
        Ok(())
    }

    /// Whether `store`'s rules let the caller in, whatever it then does.
    fn let_in(&self, store: &Store) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => anonymous(store),
            Caller::Admin => Ok(()),
            Caller::Token { id } => store.auth().signed_in(id).map(|_| ()),
        }
    }
}

/// A caller without a credential, by `store`'s rules.
fn anonymous(store: &Store) -> Result<(), Refusal> {
    if store.auth().enabled() {
        Err(crate::auth::anonymous_refusal())
    } else {
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _svc: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("the route was served without authentication"))
    }
}

/// Auth on a node: who is calling, and the failed-attempt limiter.
#[derive(Clone, Debug)]
pub struct Gate(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limiter: Mutex<Limiter>,
    metrics: Metrics,
    /// Whether a client certificate names the token a request without a
    /// bearer token acts as (`--client-cert-identity`).
    cert_identity: bool,
}

impl Gate {
    /// A gate counting into `metrics`; with `cert_identity`, client
    /// certificates name API tokens (see the module documentation).
    pub fn new(metrics: Metrics, cert_identity: bool) -> Gate {
        Gate(Arc::new(Inner {
            limiter: Mutex::new(Limiter::default()),
            metrics,
            cert_identity,
        }))
    }

    fn blocked(&self, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let addr = source(addr?);
        self.0.limiter.lock().ok()?.blocked(addr, now)
    }

    /// How long `addr` is still refused, if it is over the limit.
    pub fn blocked_now(&self, addr: Option<IpAddr>) -> Option<Duration> {
        self.blocked(addr, Instant::now())
    }

    /// Whether `given` (empty when nothing was sent) is `expected`, the
    /// cluster token as the caller must present it, for a caller at `addr`
    /// on the client port's admin routes while auth is off, where the
    /// cluster token is the only credential. A wrong token counts towards
    /// the address's limit, as with auth on, and an address over the limit
    /// is refused even with the right one until its window ends, so a
    /// guesser learns nothing from its answers by then.
    pub fn check_cluster_token(
        &self,
        addr: Option<IpAddr>,
        given: &[u8],
        expected: &[u8],
    ) -> TokenCheck {
        self.check_token(addr, given, expected, false)
    }

    /// [`Gate::check_cluster_token`] on the peer port, with one difference:
    /// an address that has presented the right token on the peer port is
    /// not refused there for being over the limit, for [`PROVEN_FOR`]
    /// after it last did. Replicas present the right token with every
    /// request, and an operator's mistyped `curl` from a replica's pod (or,
    /// on one host, from anywhere) must not cut that replica off from its
    /// peers. Its wrong tokens still count, and still block the address on
    /// the client port. What this gives up: a process that shares an
    /// address with a replica can guess at the peer port's speed, which
    /// needs a foothold in that replica's pod or host (and, with TLS, a
    /// certificate from the cluster's CA) to begin with.
    pub fn check_peer_token(
        &self,
        addr: Option<IpAddr>,
        given: &[u8],
        expected: &[u8],
    ) -> TokenCheck {
        self.check_token(addr, given, expected, true)
    }

    fn check_token(
        &self,
        addr: Option<IpAddr>,
        given: &[u8],
        expected: &[u8],
        peer: bool,
    ) -> TokenCheck {
        let now = Instant::now();
        let proven = || {
            peer && addr.is_some_and(|a| {
                self.0.limiter.lock().is_ok_and(|l| {
                    l.proven
                        .get(&source(a))
                        .is_some_and(|t| now < *t + PROVEN_FOR)
                })
            })
        };
        if let Some(wait) = self.blocked(addr, now)
            && !proven()
        {
            self.0.metrics.inc_auth_failures("rate_limited");
            return TokenCheck::Blocked(wait);
        }
        let check = TokenCheck::of(given, expected);
        match check {
            TokenCheck::Valid => {
                if peer && let (Some(a), Ok(mut l)) = (addr, self.0.limiter.lock()) {
                    l.prove(source(a), now);
                }
            }
            TokenCheck::Missing => self.0.metrics.inc_auth_failures("missing"),
            TokenCheck::Wrong => self.failed(addr, now, "invalid"),
            // `of` leaves the limiter out.
            TokenCheck::Blocked(_) => {}
        }
        check
    }

    fn failed(&self, addr: Option<IpAddr>, now: Instant, reason: &str) {
        self.0.metrics.inc_auth_failures(reason);
        if let (Some(addr), Ok(mut l)) = (addr, self.0.limiter.lock()) {
            l.fail(source(addr), now);
        }
    }
}

/// What [`Gate::check_cluster_token`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    /// No token was sent.
    Missing,
    /// A token was sent, and it is not the cluster token.
    Wrong,
    /// The caller's address is over the limit for this long.
    Blocked(Duration),
}

impl TokenCheck {
    /// Whether `given` (empty when nothing was sent) is `expected`, the
    /// cluster token (compared in constant time), leaving the limiter out.
    pub fn of(given: &[u8], expected: &[u8]) -> TokenCheck {
        if given.is_empty() {
            TokenCheck::Missing
        } else if !expected.is_empty() && token::constant_time_eq(given, expected) {
            TokenCheck::Valid
        } else {
            TokenCheck::Wrong
        }
    }
}

/// The answer to an address over the limit, which may try again in `wait`.
pub fn too_many_attempts(wait: Duration) -> ApiError {
    let secs = wait.as_secs().max(1);
    ApiError::new(
        ErrorCode::TooManyAttempts,
        format!("too many failed authentication attempts from this address; retry in {secs} s"),
    )
    .retry_after(secs)
}

/// The address a request came from, as `crate::net::serve` recorded it.
pub fn client_addr<T>(req: &axum::http::Request<T>) -> Option<IpAddr> {
    addr_in(req.extensions())
}

/// [`client_addr`] from a request's extensions.
pub fn addr_in(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip())
}

/// Who the limiter counts a caller as: its IPv4 address, or the /64 of its
/// IPv6 address (one host usually has a whole /64 to pick addresses from).
/// An IPv4 client of a dual-stack listener arrives as an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`), whose /64 would be every IPv4 client's: it
/// counts as its IPv4 address.
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => addr.to_canonical(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Failed attempts per address, each counted from its first failure.
#[derive(Debug, Default)]
struct Limiter {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
    /// Addresses that presented the right cluster token on the peer port,
    /// with when they last did (see [`Gate::check_peer_token`]).
    proven: HashMap<IpAddr, Instant>,
}

impl Limiter {
    fn blocked(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let (since, count) = *self.by_addr.get(&addr)?;
        let ends = since + WINDOW;
        if now >= ends {
            self.by_addr.remove(&addr);
            return None;
        }
        (count >= MAX_FAILURES).then(|| ends - now)
    }

    fn prove(&mut self, addr: IpAddr, now: Instant) {
        if !self.proven.contains_key(&addr)
            && self.proven.len() >= MAX_TRACKED
            && let Some(oldest) = self
                .proven
                .iter()
                .min_by_key(|(_, since)| **since)
                .map(|(a, _)| *a)
        {
            self.proven.remove(&oldest);
        }
        self.proven.insert(addr, now);
    }

    fn fail(&mut self, addr: IpAddr, now: Instant) {
        if !self.by_addr.contains_key(&addr) && self.by_addr.len() >= MAX_TRACKED {
            self.by_addr.retain(|_, (since, _)| now < *since + WINDOW);
            if self.by_addr.len() >= MAX_TRACKED
                && let Some(oldest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(a, _)| *a)
            {
                self.by_addr.remove(&oldest);
            }
        }
        let entry = self.by_addr.entry(addr).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Routes anyone may call with auth on: probes, metrics, documentation and
/// the console's static files.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs" | "/docs/"
    ) || path == "/ui"
        || path.starts_with("/ui/")
}

/// Finds out who is calling and puts the [`Caller`] in the request's
/// extensions, or answers 401/429 itself.
pub async fn authenticate<S: Service>(
    State(svc): State<S>,
    mut req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, v)| v.trim().to_owned());
    let gate = match svc.auth_gate() {
        Some(gate) if svc.auth_required() => gate,
        _ => {
            // Auth is off as far as this node knows, but an enable may
            // already be chosen and applied by the time the request reads
            // the store (the HTTP side learns of it at the end of the
            // engine's turn). The cluster token is the admin whichever
            // side of that the request falls on; any other caller is
            // checked as anonymous against the state it reads. An address
            // over the failed-attempt limit (counted where the cluster token
            // is checked, see `ClusterAuth`) is not the admin, even with the
            // right token, until its window ends.
            let caller = match bearer {
                Some(b)
                    if is_cluster_token(&svc, &b)
                        && svc
                            .auth_gate()
                            .is_none_or(|g| g.blocked_now(client_addr(&req)).is_none()) =>
                {
                    Caller::Admin
                }
                _ => Caller::Anyone,
            };
            if matches!(caller, Caller::Anyone)
                && !is_open(req.uri().path())
                && let Some(name) = crate::api::origin::public_name_from_browser(req.headers())
            {
                return ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "refused a browser's request to this node as {name}: while auth is off, \
                         a web page may call it only by an IP address, localhost or a \
                         cluster-internal name (any site's page could take a public name); \
                         use one of those, or turn auth on (--auth) and give a token"
                    ),
                )
                .into_response();
            }
            req.extensions_mut().insert(caller);
            return next.run(req).await;
        }
    };
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let addr = client_addr(&req);
    let cert = req
        .extensions()
        .get::<ClientCert>()
        .filter(|_| gate.0.cert_identity)
        .map(|c| c.0.clone());
    match identify(&svc, &gate, addr, bearer, cert).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(err) => err.into_response(),
    }
}

/// Whether `bearer` is this cluster's token (compared in constant time).
fn is_cluster_token<S: Service>(svc: &S, bearer: &str) -> bool {
    TokenCheck::of(bearer.as_bytes(), svc.cluster_token().as_bytes()) == TokenCheck::Valid
}

/// Whether `presented` is a token the rules read at `consistency` hold,
/// with that secret.
async fn known<S: Service>(
    svc: &S,
    presented: &token::Presented<'_>,
    consistency: Consistency,
) -> Result<bool, ApiError> {
    let id = presented.id.to_owned();
    let secret = presented.secret.to_owned();
    Ok(svc
        .read(consistency, move |store| {
            store
                .auth()
                .token(&id)
                .is_some_and(|t| token::verify(&secret, &t.secret_sha256))
        })
        .await?)
}

/// The token a client certificate names (see the module documentation),
/// if its common name is the id of a token the rules hold: those read here,
/// or, when they do not hold it, those of every change chosen so far (a
/// token made a moment ago elsewhere). A certificate of the port's CA is
/// not a guess, so a refusal here does not count towards the address's
/// failed-attempt limit; a name that is no token id is refused without a
/// read.
async fn by_certificate<S: Service>(
    svc: &S,
    gate: &Gate,
    name: &Arc<str>,
) -> Result<Caller, ApiError> {
    let shown = crate::text::quoted(name);
    if token::check_id(name).is_err() {
        gate.0.metrics.inc_auth_failures("invalid");
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "the client certificate's common name {shown} is not an API token id (16 hex \
                 digits): issue the certificate for the id of the token it stands for, or \
                 send Authorization: Bearer <token>"
            ),
        ));
    }
    let local = Consistency::Local { min_revision: None };
    if token_exists(svc, name, local).await?
        || token_exists(svc, name, Consistency::Linearizable).await?
    {
        return Ok(Caller::Token {
            id: name.to_string(),
        });
    }
    gate.0.metrics.inc_auth_failures("invalid");
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        format!(
            "the client certificate names token {shown}, which this cluster does not hold: \
             revoked, or of another cluster"
        ),
    ))
}

/// Whether the rules read at `consistency` hold a token with this id.
async fn token_exists<S: Service>(
    svc: &S,
    id: &Arc<str>,
    consistency: Consistency,
) -> Result<bool, ApiError> {
    let id = id.clone();
    Ok(svc
        .read(consistency, move |store| store.auth().token(&id).is_some())
        .await?)
}

async fn identify<S: Service>(
    svc: &S,
    gate: &Gate,
    addr: Option<IpAddr>,
    bearer: Option<String>,
    cert: Option<Arc<str>>,
) -> Result<Caller, ApiError> {
    let now = Instant::now();
    if let Some(wait) = gate.blocked(addr, now) {
        // An API token's 256-bit secret cannot be guessed, so a valid one is
        // let through even from a blocked address (many clients may share
        // one behind a proxy); so is a certificate of the port's CA.
        // Everything else waits out the window.
        let local = Consistency::Local { min_revision: None };
        if let Some(presented) = bearer.as_deref().and_then(token::parse)
            && known(svc, &presented, local).await?
        {
            return Ok(Caller::Token {
                id: presented.id.to_owned(),
            });
        }
        if bearer.is_none()
            && let Some(id) = &cert
            && token::check_id(id).is_ok()
            && token_exists(svc, id, local).await?
        {
            return Ok(Caller::Token { id: id.to_string() });
        }
        gate.0.metrics.inc_auth_failures("rate_limited");
        return Err(too_many_attempts(wait));
    }
    let Some(bearer) = bearer else {
        if let Some(name) = &cert {
            return by_certificate(svc, gate, name).await;
        }
        gate.0.metrics.inc_auth_failures("missing");
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this cluster requires authentication: send Authorization: Bearer <token>",
        ));
    };
    if is_cluster_token(svc, &bearer) {
        return Ok(Caller::Admin);
    }
    if let Some(presented) = token::parse(&bearer) {
        let local = Consistency::Local { min_revision: None };
        // A token created a moment ago elsewhere may not have reached this
        // replica yet: before refusing, look again once it has applied
        // everything chosen so far.
        if known(svc, &presented, local).await?
            || known(svc, &presented, Consistency::Linearizable).await?
        {
            return Ok(Caller::Token {
                id: presented.id.to_owned(),
            });
        }
    }
    gate.failed(addr, now, "invalid");
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        "the bearer token is not valid here: revoked, mistyped, or from another cluster",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_after_the_documented_count_until_the_window_ends() {
        let mut l = Limiter::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(l.blocked(a, t0), None, "after {i} failures");
            l.fail(a, t0);
        }
        assert!(l.blocked(a, t0 + Duration::from_secs(1)).is_some());
        assert_eq!(l.blocked(b, t0), None, "other addresses are not affected");
        assert_eq!(l.blocked(a, t0 + WINDOW), None, "the window ends");
        l.fail(a, t0 + WINDOW);
        assert_eq!(
            l.blocked(a, t0 + WINDOW),
            None,
            "a new window starts at one"
        );
    }

    #[test]
    fn a_guessed_cluster_token_is_refused_once_the_address_is_over_the_limit() {
        let gate = Gate::new(Metrics::new(), false);
        let guesser = Some(IpAddr::from([10, 0, 0, 1]));
        let peer = Some(IpAddr::from([10, 0, 0, 2]));
        let token = b"Bearer the-cluster-token";
        assert_eq!(
            gate.check_cluster_token(guesser, b"", token),
            TokenCheck::Missing
        );
        for _ in 1..MAX_FAILURES {
            assert_eq!(
                gate.check_cluster_token(guesser, b"Bearer a-guess", token),
                TokenCheck::Wrong
            );
        }
        // The missing token did not count.
        assert_eq!(
            gate.check_cluster_token(guesser, token, token),
            TokenCheck::Valid
        );
        assert_eq!(
            gate.check_cluster_token(guesser, b"Bearer a-guess", token),
            TokenCheck::Wrong
        );
        // Now even the right token is refused from that address.
        assert!(matches!(
            gate.check_cluster_token(guesser, token, token),
            TokenCheck::Blocked(wait) if wait > Duration::ZERO && wait <= WINDOW
        ));
        assert_eq!(
            gate.check_cluster_token(peer, token, token),
            TokenCheck::Valid
        );
        // A node without a token takes none, not even an empty one.
        assert_eq!(gate.check_cluster_token(peer, b"x", b""), TokenCheck::Wrong);
    }

    #[test]
    fn an_address_that_proved_it_holds_the_token_keeps_the_peer_port() {
        let gate = Gate::new(Metrics::new(), false);
        let replica = Some(IpAddr::from([10, 0, 0, 3]));
        let stranger = Some(IpAddr::from([10, 0, 0, 4]));
        let token = b"Bearer the-cluster-token";
        assert_eq!(
            gate.check_peer_token(replica, token, token),
            TokenCheck::Valid
        );
        for who in [replica, stranger] {
            for _ in 0..MAX_FAILURES {
                assert_eq!(
                    gate.check_peer_token(who, b"Bearer typo", token),
                    TokenCheck::Wrong
                );
            }
        }
        // The replica's address keeps the peer port; the stranger's does not.
        assert_eq!(
            gate.check_peer_token(replica, token, token),
            TokenCheck::Valid
        );
        assert!(matches!(
            gate.check_peer_token(stranger, token, token),
            TokenCheck::Blocked(_)
        ));
        // Both are over the limit on the client port's admin routes.
        for who in [replica, stranger] {
            assert!(matches!(
                gate.check_cluster_token(who, token, token),
                TokenCheck::Blocked(_)
            ));
        }
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_are_counted_one_by_one() {
        let mapped = |ip: &str| source(ip.parse().expect("ip"));
        assert_eq!(mapped("::ffff:10.0.0.1"), mapped("10.0.0.1"));
        assert_ne!(mapped("::ffff:10.0.0.1"), mapped("::ffff:10.0.0.2"));
        assert_eq!(mapped("2001:db8::1"), mapped("2001:db8::2"), "one /64");
        assert_ne!(mapped("2001:db8::1"), mapped("2001:db8:0:1::1"));
    }

    #[test]
    fn the_limiter_forgets_the_oldest_address_when_full() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            l.fail(addr, t0 + Duration::from_nanos(u64::from(i)));
        }
        l.fail(
            IpAddr::from([255, 255, 255, 255]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(l.by_addr.len(), MAX_TRACKED);
        assert!(!l.by_addr.contains_key(&IpAddr::from([0, 0, 0, 0])));
    }

    #[test]
    fn only_probes_metrics_docs_and_the_console_are_open() {
        for open in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/ui",
            "/ui/app.js",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/v1/kv/a",
            "/v1/cluster",
            "/v1/watch",
            "/uix",
            "/docs/x",
            "/v1/auth/tokens",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
