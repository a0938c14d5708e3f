//! `phxkv auth`: roles and API tokens, and auth on or off for the cluster.
//!
//! Everything but `whoami` needs an admin credential (the cluster token, or
//! a token with an admin role) in --token-file or PHXKV_TOKEN.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::http::{self, Client};
use super::{ConnectArgs, Output, OutputArgs, path_segment, print_json, render_table, write_line};
use crate::cli::CliError;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  phxkv auth role put app-reader --read app/
  phxkv auth role put app-writer --read app/ --write app/
  phxkv auth token create ci --role app-reader > ci.token
  PHXKV_TOKEN_FILE=ci.token phxkv get app/config
  phxkv auth token revoke 3f9a0c4e12b7d5a8
  PHXKV_TOKEN_FILE=cluster.token phxkv auth enable")]
pub struct AuthArgs {
    #[command(subcommand)]
    pub action: AuthAction,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum AuthAction {
    /// Who the token you send is, and whether it is an admin.
    Whoami,
    /// Roles: named sets of read and write permissions on key prefixes.
    #[command(subcommand)]
    Role(RoleAction),
    /// API tokens: bearer credentials holding roles.
    #[command(subcommand)]
    Token(TokenAction),
    /// Require a credential on every replica, including those started
    /// without --auth (nodes started with --auth do this when they start).
    /// Needs the cluster token (an admin token works only while auth is on).
    Enable,
    /// Stop requiring a credential on replicas started without --auth;
    /// those with it keep requiring one.
    Disable,
}

#[derive(Subcommand, Debug)]
pub enum RoleAction {
    /// List the roles and their permissions.
    List,
    /// Create a role, or replace its permissions with the ones given.
    #[command(visible_alias = "create")]
    Put {
        /// 1 to 64 letters, digits, '.', '_', '-', '@' or ':'.
        name: String,
        /// Read keys starting with PREFIX ("" for every key); repeatable.
        #[arg(long, value_name = "PREFIX")]
        read: Vec<String>,
        /// Write keys starting with PREFIX; repeatable.
        #[arg(long, value_name = "PREFIX")]
        write: Vec<String>,
        /// Membership, auth management, backups, and every key.
        #[arg(long)]
        admin: bool,
    },
    /// Delete a role; tokens holding it lose what it granted.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// List tokens (ids, names, roles; never secrets).
    List,
    /// Create a token and print it: the only time it is shown.
    Create {
        /// Who or what it is for.
        name: String,
        /// A role to give it; repeatable.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Revoke a token: no replica accepts it once this returns.
    Revoke {
        /// The token's id (the 16 hex digits after `phxkv_`).
        id: String,
    },
    /// Replace a token's roles with the ones given (none: take all away).
    Roles {
        id: String,
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
}

/// Merges `--read` and `--write` prefixes into permissions, one per prefix.
fn permissions(read: &[String], write: &[String]) -> Vec<Value> {
    let mut prefixes: Vec<&String> = read.iter().chain(write).collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
        .into_iter()
        .map(|p| json!({"prefix": p, "read": read.contains(p), "write": write.contains(p)}))
        .collect()
}

/// A role name is a path segment: an empty one would reach no route, and
/// the answer would blame the endpoint rather than the name.
fn check_role_name(name: &str) -> Result<(), CliError> {
    crate::auth::check_name("role", name).map_err(|refusal| CliError::Usage(refusal.message))
}

pub async fn run(args: AuthArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let format = args.output.format();
    let answer: Value = match args.action {
        AuthAction::Whoami => get(&client, "/v1/auth/whoami").await?,
        AuthAction::Role(RoleAction::List) => get(&client, "/v1/auth/roles").await?,
        AuthAction::Role(RoleAction::Put {
            name,
            read,
            write,
            admin,
        }) => {
            check_role_name(&name)?;
            if read.is_empty() && write.is_empty() && !admin {
                return Err(CliError::Usage(
                    "give at least one of --read PREFIX, --write PREFIX or --admin".into(),
                ));
            }
            let body = json!({"permissions": permissions(&read, &write), "admin": admin});
            let path = format!("/v1/auth/roles/{}", path_segment(name.as_bytes()));
            send(&client, reqwest::Method::PUT, &path, Some(body)).await?
        }
        AuthAction::Role(RoleAction::Delete { name }) => {
            check_role_name(&name)?;
            let path = format!("/v1/auth/roles/{}", path_segment(name.as_bytes()));
            send(&client, reqwest::Method::DELETE, &path, None).await?
        }
        AuthAction::Token(TokenAction::List) => get(&client, "/v1/auth/tokens").await?,
        AuthAction::Token(TokenAction::Create { name, roles }) => {
            let body = json!({"name": name, "roles": roles});
            let created = send(
                &client,
                reqwest::Method::POST,
                "/v1/auth/tokens",
                Some(body),
            )
            .await?;
            if roles.is_empty() {
                // Most likely a forgotten --role (`token roles` with none
                // means "take them all away", as documented, so it does not
                // warn).
                crate::cli::tell!(
                    "warning: the token holds no role, so it may read or write no key; \
                     give it one with `phxkv auth token roles ID --role ROLE`"
                );
            }
            warn_unknown_roles(&client, &roles).await;
            if format != Output::Json {
                // The token alone on stdout, so `> file` keeps just it.
                crate::cli::tell!(
                    "created token {} ({}); it is shown only now:",
                    created["id"].as_str().unwrap_or("?"),
                    created["name"].as_str().unwrap_or("?")
                );
                return write_line(created["token"].as_str().unwrap_or_default());
            }
            created
        }
        AuthAction::Token(TokenAction::Revoke { id }) => {
            let path = format!("/v1/auth/tokens/{}", path_segment(id.as_bytes()));
            send(&client, reqwest::Method::DELETE, &path, None).await?
        }
        AuthAction::Enable => send(&client, reqwest::Method::POST, "/v1/auth/enable", None).await?,
        AuthAction::Disable => {
            send(&client, reqwest::Method::POST, "/v1/auth/disable", None).await?
        }
        AuthAction::Token(TokenAction::Roles { id, roles }) => {
            let path = format!("/v1/auth/tokens/{}/roles", path_segment(id.as_bytes()));
            let changed = send(
                &client,
                reqwest::Method::PUT,
                &path,
                Some(json!({"roles": roles})),
            )
            .await?;
            warn_unknown_roles(&client, &roles).await;
            changed
        }
    };
    if format == Output::Json {
        return print_json(&answer);
    }
    print_text(&answer)
}

/// Says on stderr when a token was just given roles that do not exist.
/// The server takes them (a role is named, not referenced: a
/// role made later under that name grants its rights), but a mistyped name
/// would otherwise leave a token that is refused everything, with nothing
/// to say why. Best effort: a failed look-up says nothing.
async fn warn_unknown_roles(client: &Client, roles: &[String]) {
    if roles.is_empty() {
        return;
    }
    let Ok(answer) = get(client, "/v1/auth/roles").await else {
        return;
    };
    let known: Vec<&str> = answer["roles"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    for role in roles.iter().filter(|r| !known.contains(&r.as_str())) {
        crate::cli::tell!(
            "warning: no role is named {role:?}; the token gets nothing from it until \
             one is made (`phxkv auth role put {role} --read PREFIX ...`)"
        );
    }
}

async fn get(client: &Client, path: &str) -> Result<Value, CliError> {
    send(client, reqwest::Method::GET, path, None).await
}

async fn send(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let resp = if method == reqwest::Method::GET {
        client
            .send(|h, base| h.request(method.clone(), format!("{base}{path}")))
            .await?
    } else {
        client
            .send_write(|h, base| {
                let req = h.request(method.clone(), format!("{base}{path}"));
                match &body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?
    };
    http::json(resp).await
}

/// A listing as a table, a change as its revision, `whoami` as lines.
fn print_text(answer: &Value) -> Result<(), CliError> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    if let Some(roles) = answer["roles"]
        .as_array()
        .filter(|_| answer.get("kind").is_none())
    {
        let rows: Vec<Vec<String>> = roles
            .iter()
            .map(|r| {
                let perms = r["permissions"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let mode = match (p["read"].as_bool(), p["write"].as_bool()) {
                                    (Some(true), Some(true)) => "rw",
                                    (_, Some(true)) => "w",
                                    _ => "r",
                                };
                                format!("{mode}:{:?}", text(&p["prefix"]))
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                let admin = if r["admin"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                };
                vec![text(&r["name"]), admin.to_string(), perms]
            })
            .collect();
        return super::write_out(render_table(&["ROLE", "ADMIN", "PERMISSIONS"], &rows).as_bytes());
    }
    if let Some(tokens) = answer["tokens"].as_array() {
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| vec![text(&t["id"]), text(&t["name"]), list(&t["roles"])])
            .collect();
        return super::write_out(render_table(&["ID", "NAME", "ROLES"], &rows).as_bytes());
    }
    if let Some(kind) = answer["kind"].as_str() {
        let enabled = answer["auth_enabled"].as_bool() == Some(true);
        let who = match kind {
            "token" => format!(
                "token {} ({}), roles: {}",
                text(&answer["id"]),
                text(&answer["name"]),
                list(&answer["roles"])
            ),
            "admin" => "the cluster token (admin)".to_string(),
            _ => "anyone: this node does not require a token (phxkv auth enable)".to_string(),
        };
        write_line(&who)?;
        let admin = answer["admin"].as_bool() == Some(true);
        return write_line(&format!(
            "auth {}; admin: {}",
            if enabled { "on" } else { "off" },
            if admin { "yes" } else { "no" }
        ));
    }
    match (answer["revision"].as_u64(), answer["enabled"].as_bool()) {
        (Some(rev), Some(on)) => write_line(&format!(
            "auth {} for the cluster at revision {rev}; {}",
            if on { "enabled" } else { "disabled" },
            if on {
                "every replica requires a credential"
            } else {
                "replicas started with --auth still require one"
            }
        )),
        (Some(rev), None) => write_line(&format!(
            "done at revision {rev}; in force on every replica"
        )),
        (None, _) => print_json(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_prefixes_merge_into_one_permission_each() {
        let got = permissions(&["app/".into(), "cfg/".into()], &["app/".into()]);
        assert_eq!(
            got,
            vec![
                json!({"prefix": "app/", "read": true, "write": true}),
                json!({"prefix": "cfg/", "read": true, "write": false}),
            ]
        );
    }
}
