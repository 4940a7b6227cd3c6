//! The Kubernetes manifests of deploy/kubernetes, checked by an independent parser and the
//! Kubernetes schemas (tests/python/k8s_manifests.py: PyYAML, kubernetes-validate), and
//! against the node's own config parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[tokio::test]
async fn the_kubernetes_manifests_are_valid_and_agree_with_the_node_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let checked =
        tongban_tests::run_python_json("k8s_manifests.py", vec![dir.display().to_string()]).await;
    assert_eq!(checked["errors"], serde_json::json!([]), "{checked}");
    assert!(checked["documents"].as_u64().unwrap() >= 8, "{checked}");
    // The node's own parser takes the ConfigMap's config, with the replica id the
    // StatefulSet's pod name gives.
    let text = checked["node_toml"].as_str().unwrap();
    let config = tongban_gateway::config::NodeConfig::parse(
        text,
        std::path::Path::new("/etc/tongban/config"),
        std::path::Path::new("node.toml (ConfigMap tongban-jinan)"),
        |k| (k == "TONGBAN_REPLICA").then(|| "tongban-jinan-1".to_string()),
    );
    // And the policy, with the node's policy parser.
    let policy = checked["policy_toml"].as_str().unwrap();
    if let Err(e) = tongban_gateway::policy::Policy::parse(policy) {
        panic!("the node does not take the ConfigMap's policy: {e}");
    }
    match config {
        Ok(c) => {
            assert_eq!(c.replica, "tongban-jinan-1");
            assert!(matches!(
                c.shared_store,
                tongban_gateway::store::SharedBackend::Etcd { .. }
            ));
        }
        Err(e) => panic!("the node does not take the ConfigMap's config: {e}"),
    }
}
