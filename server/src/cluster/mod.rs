//! Who is in the cluster at bootstrap, and who this node is: a static member
//! list (`--initial-members`) or the Kubernetes way (`--discovery dns:`),
//! where pods of a StatefulSet find each other through a headless Service.

use crate::paxos::{Member, Membership, Role, node_id_from_name};

/// Parses `name=url,name=url,...` into a configuration of voters.
pub fn parse_initial_members(spec: &str) -> Result<Membership, String> {
    let mut m = Membership::default();
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
        let id = node_id_from_name(name);
        if m.members.contains_key(&id) {
            return Err(format!("member {name:?} is listed twice"));
        }
        m.members.insert(
            id,
            Member {
                name: name.to_string(),
                addr: url.to_string(),
                role: Role::Voter,
            },
        );
    }
    if m.members.is_empty() {
        return Err("the member list is empty".into());
    }
    Ok(m)
}

/// The configuration of a StatefulSet of `replicas` pods named
/// `<set>-<ordinal>`, reachable as `<pod>.<service>` on `peer_port`. The set
/// name is this pod's name without its ordinal.
pub fn dns_members(
    own_name: &str,
    service: &str,
    replicas: u32,
    peer_port: u16,
) -> Result<Membership, String> {
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
        .map(|i| format!("{set}-{i}=http://{set}-{i}.{service}:{peer_port}"))
        .collect();
    parse_initial_members(&spec.join(","))
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
            "node name {name:?} must be 1-63 characters of letters, digits, '-', '_' or '.'"
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
        assert_eq!(m.voter_count(), 2);
        assert!(
            m.members
                .values()
                .any(|x| x.addr == "http://127.0.0.1:8082")
        );
        assert!(parse_initial_members("").is_err());
        assert!(parse_initial_members("a").is_err());
        assert!(parse_initial_members("a=ftp://x").is_err());
        assert!(parse_initial_members("a=http://x,a=http://y").is_err());
        assert!(parse_initial_members("a b=http://x").is_err());
    }

    #[test]
    fn dns_discovery_names_every_pod_of_the_set() {
        let m = dns_members("phxkv-1", "phxkv-peers", 3, 8081).expect("members");
        let addrs: Vec<&str> = m.members.values().map(|x| x.addr.as_str()).collect();
        assert!(addrs.contains(&"http://phxkv-0.phxkv-peers:8081"));
        assert!(addrs.contains(&"http://phxkv-2.phxkv-peers:8081"));
        assert_eq!(m.voter_count(), 3);
        assert!(dns_members("laptop", "svc", 3, 8081).is_err());
        assert!(dns_members("phxkv-x", "svc", 3, 8081).is_err());
    }
}
