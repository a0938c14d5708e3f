//! `phxkv status`: the cluster as one node sees it, as a table.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::http::{self, Client};
use super::{ConnectArgs, Output, OutputArgs, print_json, render_table, write_out};
use crate::cli::CliError;

/// The JSON that `status -o json` and `members -o json` print.
pub const JSON_HELP: &str = "\
Output (-o):
  text, table  a summary (master, lease, revisions), then one row per member
  json   the API's GET /v1/cluster answer, every field always present
         (null when unknown):
         {\"cluster_id\", \"node\", \"revision\", \"applied_index\", \"commit_index\",
          \"master\", \"lease_remaining_ms\", \"node_state\", \"node_state_reason\",
          \"divergence\", \"members\": [{\"name\", \"id\", \"role\", \"peer_url\",
          \"is_master\", \"healthy\", \"commit_index\"}, ...]}";

#[derive(Args, Debug)]
#[command(after_help = JSON_HELP)]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `GET /v1/cluster`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub node: String,
    pub revision: u64,
    pub applied_index: u64,
    pub commit_index: u64,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub lease_remaining_ms: Option<u64>,
    /// `lease` or `quorum`; absent from replicas of an earlier version.
    #[serde(default)]
    pub read_mode: Option<String>,
    pub members: Vec<MemberInfo>,
    /// Why the answering node is not a member, when it is not.
    #[serde(default)]
    pub node_state: Option<String>,
    #[serde(default)]
    pub node_state_reason: Option<String>,
    #[serde(default)]
    pub divergence: Option<serde_json::Value>,
    /// Every other field of the answer, so that `-o json` prints all of
    /// it, fields added later included.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// One member in [`ClusterInfo`].
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    /// The member's incarnation.
    #[serde(default)]
    pub id: String,
    pub role: String,
    pub peer_url: String,
    pub is_master: bool,
    pub healthy: bool,
    #[serde(default)]
    pub commit_index: Option<u64>,
    /// Every other field of the member's entry (see [`ClusterInfo::rest`]).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// Fetches the cluster's state from the first endpoint that answers.
pub async fn fetch(client: &Client) -> Result<ClusterInfo, CliError> {
    let resp = client
        .send(|h, base| h.get(format!("{base}/v1/cluster")))
        .await?;
    http::json(resp).await
}

/// The table `status` prints.
pub fn render(info: &ClusterInfo) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "cluster {}  (as seen by {})\nmaster {}  {}\nrevision {}  commit index {}  applied index {}\n",
        info.cluster_id,
        info.node,
        info.master.as_deref().unwrap_or("(none)"),
        match (info.read_mode.as_deref(), info.lease_remaining_ms) {
            // No lease is relied on: reads are confirmed by a quorum.
            (Some("quorum"), _) => "read mode quorum".to_string(),
            (_, Some(ms)) => format!("lease {ms}ms left"),
            // Only the master knows its lease.
            (_, None) => "lease (known to the master only)".into(),
        },
        info.revision,
        info.commit_index,
        info.applied_index,
    ));
    match (&info.node_state, &info.node_state_reason) {
        (Some(state), Some(why)) if state != "member" => {
            out.push_str(&format!("{} is {state}: {why}\n", info.node));
        }
        (_, Some(why)) => out.push_str(&format!("{}: {why}\n", info.node)),
        _ => {}
    }
    if let Some(d) = &info.divergence
        && !d.is_null()
    {
        // A replica of an earlier version names no part: it compared keys.
        let part = match d["part"].as_str() {
            Some("requests") => "its request-id table differs",
            _ => "its keys differ",
        };
        out.push_str(&format!(
            "{} DIVERGED from the cluster at index {} ({part}): it serves no reads; replace it\n",
            info.node, d["index"]
        ));
    }
    out.push('\n');
    let mut members: Vec<&MemberInfo> = info.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<[String; 7]> = members
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.id.clone(),
                m.role.clone(),
                if m.is_master {
                    "*".into()
                } else {
                    String::new()
                },
                m.commit_index.map_or("-".into(), |c| c.to_string()),
                if m.healthy { "healthy" } else { "unhealthy" }.into(),
                m.peer_url.clone(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &[
            "NAME", "ID", "ROLE", "MASTER", "COMMIT", "HEALTH", "PEER URL",
        ],
        &rows,
    ));
    out
}

pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let info = fetch(&client).await?;
    print_info(&info, args.output.format())
}

/// Prints the cluster's state in the format asked for (text and table are
/// the same: the text already is a table).
pub fn print_info(info: &ClusterInfo, format: Output) -> Result<(), CliError> {
    match format {
        Output::Json => print_json(info),
        Output::Text | Output::Table => write_out(render(info).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diverged(divergence: serde_json::Value) -> ClusterInfo {
        serde_json::from_value(serde_json::json!({
            "cluster_id": "c", "node": "n2", "master": "n1", "revision": 5,
            "commit_index": 9, "applied_index": 9, "members": [],
            "divergence": divergence,
        }))
        .expect("a cluster view")
    }

    #[test]
    fn status_says_which_digest_of_a_diverged_replica_differs() {
        let keys = render(&diverged(serde_json::json!({"index": 64, "part": "keys"})));
        assert!(
            keys.contains("n2 DIVERGED from the cluster at index 64 (its keys differ)"),
            "{keys}"
        );
        let table = render(&diverged(
            serde_json::json!({"index": 128, "part": "requests"}),
        ));
        assert!(
            table.contains("at index 128 (its request-id table differs)"),
            "{table}"
        );
        // A replica of an earlier version names no part: it compared keys.
        let old = render(&diverged(serde_json::json!({"index": 64})));
        assert!(old.contains("(its keys differ)"), "{old}");
        assert!(!render(&diverged(serde_json::Value::Null)).contains("DIVERGED"));
    }

    #[test]
    fn status_gives_the_reason_of_a_member_that_was_removed_and_of_a_joining_node() {
        let with = |state: &str, reason: &str| {
            render(
                &serde_json::from_value(serde_json::json!({
                    "cluster_id": "c", "node": "n3", "master": "n1", "revision": 5,
                    "commit_index": 9, "applied_index": 9, "members": [],
                    "node_state": state, "node_state_reason": reason,
                }))
                .expect("a cluster view"),
            )
        };
        let removed = with("member", "it was removed from the cluster");
        assert!(
            removed.contains("n3: it was removed from the cluster\n"),
            "{removed}"
        );
        let joining = with("joining", "waiting to be added");
        assert!(
            joining.contains("n3 is joining: waiting to be added\n"),
            "{joining}"
        );
    }

    #[test]
    fn status_names_the_read_mode_instead_of_a_lease_under_quorum_reads() {
        let with = |extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "cluster_id": "c", "node": "n1", "master": "n1", "revision": 5,
                "commit_index": 9, "applied_index": 9, "members": [],
            });
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            render(&serde_json::from_value(v).expect("a cluster view"))
        };
        let quorum = with(serde_json::json!({"read_mode": "quorum"}));
        assert!(quorum.contains("master n1  read mode quorum\n"), "{quorum}");
        let lease = with(serde_json::json!({"read_mode": "lease", "lease_remaining_ms": 812}));
        assert!(lease.contains("master n1  lease 812ms left\n"), "{lease}");
        let follower = with(serde_json::json!({}));
        assert!(
            follower.contains("lease (known to the master only)"),
            "{follower}"
        );
    }
}
