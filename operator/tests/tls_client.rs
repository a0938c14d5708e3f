//! The operator talks to real API servers over TLS: building a client for
//! an `https://` server must work once the operator has chosen its crypto
//! provider as it does at startup (without one this panics at the first
//! connection setup, since two providers are compiled in).

#[tokio::test]
async fn a_client_for_an_https_api_server_can_be_built() {
    phxkv_operator::install_crypto_provider();
    let kubeconfig: kube::config::Kubeconfig = serde_norway::from_str(
        r#"
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
users:
- name: u
  user: {token: abc}
"#,
    )
    .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("a TLS client");
    // Nothing listens there: a clean error, not a panic.
    assert!(client.apiserver_version().await.is_err());
}
