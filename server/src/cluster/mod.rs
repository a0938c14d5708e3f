//! Who is in the cluster at bootstrap, and who this node is: a static member
//! list (`--initial-members`) or the Kubernetes way (`--discovery dns:`),
//! where pods of a StatefulSet find each other through a headless Service.
//! [`bootstrap`] decides what a node with an empty data directory does with
//! that list.

pub mod bootstrap;

use std::collections::BTreeSet;

pub use bootstrap::BootstrapPeer;

use crate::paxos::{Member, Membership, Role, node_id_from_name};

/// Parses `name=url,name=url,...` into the bootstrap list.
pub fn parse_initial_members(spec: &str) -> Result<Vec<BootstrapPeer>, String> {
    let mut peers = Vec::new();
    let mut seen = BTreeSet::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not of the form name=http://host:port"))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        validate_name(name)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "member {name:?}: {url:?} must start with http:// or https://"
            ));
        }
        check_peer_url(url).map_err(|e| format!("member {name:?}: {e}"))?;
        if !seen.insert(name.to_string()) {
            return Err(format!("member {name:?} is listed twice"));
        }
        peers.push(BootstrapPeer {
            name: name.to_string(),
            peer_url: url.to_string(),
        });
    }
    if peers.is_empty() {
        return Err("the member list is empty".into());
    }
    Ok(peers)
}

/// Refuses a peer URL that is no `http(s)://host:port` a peer could be
/// called at (a port out of range, no host): the HTTP client would refuse
/// it only when first used, as a "builder error" that names nothing.
pub fn check_peer_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

/// Refuses a peer URL whose scheme is not the one peer ports speak: https
/// when peers speak TLS (`tls`), http otherwise.
pub fn check_peer_scheme(url: &str, tls: bool) -> Result<(), String> {
    let wanted = crate::tls::scheme(tls);
    if url
        .strip_prefix(wanted)
        .is_some_and(|rest| rest.starts_with("://"))
    {
        return Ok(());
    }
    Err(format!(
        "{url:?} must start with {wanted}://: peers speak {}",
        if tls {
            "mutual TLS"
        } else {
            "plain HTTP (no --tls-cert or --peer-tls-cert)"
        }
    ))
}

/// The bootstrap list of a StatefulSet of `replicas` pods named
/// `<set>-<ordinal>`, reachable as `<pod>.<service>` on `peer_port` with
/// `scheme` (`http` or `https`). The set name is this pod's name without
/// its ordinal.
pub fn dns_members(
    own_name: &str,
    service: &str,
    replicas: u32,
    scheme: &str,
    peer_port: u16,
) -> Result<Vec<BootstrapPeer>, String> {
    let (set, ordinal) = own_name.rsplit_once('-').ok_or_else(|| {
        format!("node name {own_name:?} is not a StatefulSet pod name (<set>-<ordinal>)")
    })?;
    ordinal
        .parse::<u32>()
        .map_err(|_| format!("node name {own_name:?} does not end in a pod ordinal"))?;
    if replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    let spec: Vec<String> = (0..replicas)
        .map(|i| format!("{set}-{i}={scheme}://{set}-{i}.{service}:{peer_port}"))
        .collect();
    parse_initial_members(&spec.join(","))
}

/// The configuration phxkv used before incarnations: every member's id
/// derived from its name. A data directory from that time keeps it.
pub fn legacy_membership(peers: &[BootstrapPeer]) -> Membership {
    let mut m = Membership::default();
    for p in peers {
        m.members.insert(
            node_id_from_name(&p.name),
            Member {
                name: p.name.clone(),
                addr: p.peer_url.clone(),
                role: Role::Voter,
            },
        );
    }
    m
}

/// Node names become pod names, DNS labels and file names: keep them tame.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {} must be 1-63 characters of letters, digits, '-', '_' or '.'",
            crate::text::quoted(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_member_lists_parse_and_reject_nonsense() {
        let m = parse_initial_members("a=http://127.0.0.1:8081, b=http://127.0.0.1:8082/")
            .expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].peer_url, "http://127.0.0.1:8082");
        assert!(parse_initial_members("").is_err());
        assert!(parse_initial_members("a").is_err());
        assert!(parse_initial_members("a=ftp://x").is_err());
        assert!(parse_initial_members("a=http://x,a=http://y").is_err());
        assert!(parse_initial_members("a b=http://x").is_err());
        // A URL the HTTP client could not call is refused here, saying why.
        let why = parse_initial_members("a=http://127.0.0.1:99999").expect_err("bad port");
        assert!(
            why.contains("member \"a\"") && why.contains("port"),
            "{why}"
        );
        assert!(parse_initial_members("a=http://").is_err());
    }

    #[test]
    fn dns_discovery_names_every_pod_of_the_set() {
        let m = dns_members("phxkv-1", "phxkv-peers", 3, "http", 8081).expect("members");
        let addrs: Vec<&str> = m.iter().map(|x| x.peer_url.as_str()).collect();
        assert!(addrs.contains(&"http://phxkv-0.phxkv-peers:8081"));
        assert!(addrs.contains(&"http://phxkv-2.phxkv-peers:8081"));
        assert_eq!(m.len(), 3);
        assert_eq!(bootstrap::seed(&m), Some("phxkv-0"));
        assert!(dns_members("laptop", "svc", 3, "http", 8081).is_err());
        assert!(dns_members("phxkv-x", "svc", 3, "http", 8081).is_err());
    }
}
