//! Deny-by-default authorisation (DESIGN §2 steps 3 and 6). Each node has one TOML policy
//! file; the home node evaluates it before forwarding a call, and the providing node
//! evaluates its own when the call arrives (it has the final say). A local call is evaluated
//! once, by the node that is both.
//!
//! A call passes only if some `allow` rule matches it and no `deny` rule does. A rule matches
//! when every field matches:
//!
//! | field | matches |
//! | --- | --- |
//! | `callers` | `city/org`, `city/*`, `*`, or `role:NAME` (the caller has that role) |
//! | `target_cities` | the city that serves the call; `*` for any (default `*`) |
//! | `services` | full service name, a prefix ending in `.*`, or `*` |
//! | `methods` | method names; empty for all |
//! | `purposes` | `x-tongban-purpose` values; `*` for any (never the default) |
//! | `catalog_codes` | when set, the call must name one of them in `x-tongban-catalog-code` |
//!
//! The file is re-read when it changes ([`PolicyStore::watch`]); a broken new file is
//! refused with a log line and the previous policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid policy: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// One rule of a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub callers: Vec<String>,
    #[serde(default = "any")]
    pub target_cities: Vec<String>,
    pub services: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    pub purposes: Vec<String>,
    #[serde(default)]
    pub catalog_codes: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".to_string()]
}

/// What a policy decides about.
#[derive(Debug, Clone)]
pub struct PolicyRequest<'a> {
    pub caller_city: &'a str,
    pub caller_org: &'a str,
    pub roles: &'a [String],
    pub target_city: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub purpose: &'a str,
    pub catalog_code: Option<&'a str>,
}

/// The outcome, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Option<String>,
}

impl Decision {
    /// A sentence for the caller and the operator.
    pub fn explain(&self, r: &PolicyRequest<'_>) -> String {
        let what = format!(
            "{}/{} calling {}/{} in `{}` for purpose `{}`",
            r.caller_city, r.caller_org, r.service, r.method, r.target_city, r.purpose
        );
        match (&self.allowed, &self.rule) {
            (true, Some(rule)) => format!("{what} is allowed by rule `{rule}`"),
            (false, Some(rule)) => format!("{what} is denied by rule `{rule}`"),
            _ => format!("{what} is denied: no rule allows it (deny by default)"),
        }
    }
}

impl Rule {
    fn validate(&self, i: usize) -> Result<(), PolicyError> {
        let bad = |field: &str, m: String| PolicyError::Invalid(format!("rules[{i}].{field}: {m}"));
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        for (field, list) in [
            ("callers", &self.callers),
            ("target_cities", &self.target_cities),
            ("services", &self.services),
            ("purposes", &self.purposes),
        ] {
            if list.is_empty() {
                return Err(bad(field, "must list at least one value".into()));
            }
        }
        for c in &self.callers {
            let ok = c == "*"
                || c.strip_prefix("role:").is_some_and(|r| !r.is_empty())
                || c.split_once('/')
                    .is_some_and(|(city, org)| !city.is_empty() && !org.is_empty());
            if !ok {
                return Err(bad(
                    "callers",
                    format!("`{c}` is not city/org, city/*, role:NAME or *"),
                ));
            }
        }
        Ok(())
    }

    fn matches(&self, r: &PolicyRequest<'_>) -> bool {
        let caller = self.callers.iter().any(|c| {
            if c == "*" {
                return true;
            }
            if let Some(role) = c.strip_prefix("role:") {
                return r.roles.iter().any(|x| x == role);
            }
            match c.split_once('/') {
                Some((city, org)) => city == r.caller_city && (org == "*" || org == r.caller_org),
                None => false,
            }
        });
        let city = self
            .target_cities
            .iter()
            .any(|c| c == "*" || c == r.target_city);
        let service = self.services.iter().any(|s| {
            s == "*"
                || s == r.service
                || s.strip_suffix('*')
                    .is_some_and(|p| p.ends_with('.') && r.service.starts_with(p))
        });
        let method = self.methods.is_empty() || self.methods.iter().any(|m| m == r.method);
        let purpose = self.purposes.iter().any(|p| p == "*" || p == r.purpose);
        let code = self.catalog_codes.is_empty()
            || r.catalog_code
                .is_some_and(|c| self.catalog_codes.iter().any(|x| x == c));
        caller && city && service && method && purpose && code
    }
}

/// A parsed, validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// SHA-256 (hex) of the text it was parsed from.
    digest: String,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Invalid(e.message().to_string()))?;
        for (i, r) in file.rules.iter().enumerate() {
            r.validate(i)?;
        }
        use sha2::Digest as _;
        Ok(Policy {
            rules: file.rules,
            digest: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        })
    }

    /// SHA-256 (hex) of the text it was parsed from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Deny rules first, then the first allow rule; nothing matching is a denial.
    pub fn decide(&self, r: &PolicyRequest<'_>) -> Decision {
        if let Some(rule) = self
            .rules
            .iter()
            .find(|x| x.effect == Effect::Deny && x.matches(r))
        {
            return Decision {
                allowed: false,
                rule: Some(rule.name.clone()),
            };
        }
        match self
            .rules
            .iter()
            .find(|x| x.effect == Effect::Allow && x.matches(r))
        {
            Some(rule) => Decision {
                allowed: true,
                rule: Some(rule.name.clone()),
            },
            None => Decision {
                allowed: false,
                rule: None,
            },
        }
    }
}

/// The policy in force, swapped atomically when its file changes.
pub struct PolicyStore {
    path: PathBuf,
    current: ArcSwap<Policy>,
    modified: Mutex<Option<SystemTime>>,
    /// Counts the policies installed (tests and operators can await a reload).
    generation: watch::Sender<u64>,
    /// Reloads by outcome, in the node's metrics (once [`Self::count_reloads_in`] is called).
    reloads: std::sync::OnceLock<Reloads>,
}

/// A node metric counting reloads by outcome.
pub type Reloads = prometheus_client::metrics::family::Family<
    tongban_telemetry::metrics::OutcomeLabels,
    prometheus_client::metrics::counter::Counter,
>;

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicyStore {
    pub fn open(path: &Path) -> Result<PolicyStore, PolicyError> {
        let modified = mtime(path);
        let policy = Policy::load(path)?;
        Ok(PolicyStore {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(policy),
            modified: Mutex::new(modified),
            generation: watch::channel(0).0,
            reloads: std::sync::OnceLock::new(),
        })
    }

    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A receiver that changes every time a new policy is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the file now. On error the previous policy stays in force.
    /// Counts every reload from now on in `reloads` (`ok` or `failed`).
    pub fn count_reloads_in(&self, reloads: Reloads) {
        let _ = self.reloads.set(reloads);
    }

    pub fn reload(&self) -> Result<usize, PolicyError> {
        let loaded = self.load_and_install();
        if let Some(r) = self.reloads.get() {
            tongban_telemetry::NodeMetrics::outcome(r, loaded.is_ok());
        }
        loaded
    }

    fn load_and_install(&self) -> Result<usize, PolicyError> {
        let modified = mtime(&self.path);
        let policy = Policy::load(&self.path)?;
        let n = policy.rules.len();
        self.current.store(Arc::new(policy));
        if let Ok(mut m) = self.modified.lock() {
            *m = modified;
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(n)
    }

    /// Polls the file's modification time every `every` and reloads it when it changes.
    pub async fn watch(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = shutdown.changed() => return,
            }
            let now = mtime(&self.path);
            let changed = self.modified.lock().map(|m| *m != now).unwrap_or(false);
            if !changed {
                continue;
            }
            match self.reload() {
                Ok(rules) => tracing::info!(rules, path = %self.path.display(), "policy reloaded"),
                Err(error) => {
                    // Remember the broken version so the error is logged once, not every tick.
                    if let Ok(mut m) = self.modified.lock() {
                        *m = now;
                    }
                    tracing::error!(%error, "policy change refused; the previous policy stays in force")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rules]]
name = "hrss to qingdao"
effect = "allow"
callers = ["jinan/hrss"]
target_cities = ["qingdao"]
services = ["tongban.crosscity.v1.CrossCityService"]
methods = ["Submit", "GetStatus"]
purposes = ["case-handling"]

[[rules]]
name = "auditors read everything"
effect = "allow"
callers = ["role:auditor"]
services = ["tongban.*"]
purposes = ["audit"]

[[rules]]
name = "no bulk export"
effect = "deny"
callers = ["*"]
services = ["*"]
methods = ["Export"]
purposes = ["*"]
"#;

    fn req<'a>(
        org: &'a str,
        roles: &'a [String],
        method: &'a str,
        purpose: &'a str,
    ) -> PolicyRequest<'a> {
        PolicyRequest {
            caller_city: "jinan",
            caller_org: org,
            roles,
            target_city: "qingdao",
            service: "tongban.crosscity.v1.CrossCityService",
            method,
            purpose,
            catalog_code: None,
        }
    }

    #[test]
    fn deny_by_default_allow_by_rule_deny_wins() {
        let p = Policy::parse(POLICY).unwrap();
        let none: Vec<String> = vec![];
        let auditor = vec!["auditor".to_string()];
        let d = p.decide(&req("hrss", &none, "Submit", "case-handling"));
        assert!(d.allowed);
        assert_eq!(d.rule.as_deref(), Some("hrss to qingdao"));
        assert!(!p.decide(&req("hrss", &none, "Submit", "marketing")).allowed);
        assert!(
            !p.decide(&req("ybj", &none, "Submit", "case-handling"))
                .allowed
        );
        assert!(
            !p.decide(&req("hrss", &none, "WatchStatus", "case-handling"))
                .allowed
        );
        assert!(
            p.decide(&req("ybj", &auditor, "WatchStatus", "audit"))
                .allowed
        );
        let d = p.decide(&req("ybj", &auditor, "Export", "audit"));
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (false, Some("no bulk export"))
        );
        assert!(
            !Policy::default()
                .decide(&req("hrss", &none, "Submit", "case-handling"))
                .allowed
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let e = Policy::parse("[[rules]]\nname='x'\neffect='allow'\ncallers=['hrss']\nservices=['*']\npurposes=['a']\n")
            .unwrap_err();
        assert!(e.to_string().contains("rules[0].callers"), "{e}");
        let e = Policy::parse(
            "[[rules]]\nname='x'\neffect='maybe'\ncallers=['*']\nservices=['*']\npurposes=['a']\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        let e = Policy::parse(
            "[[rules]]\nname='x'\neffect='allow'\ncallers=['*']\nservices=['*']\npurposes=[]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("purposes"), "{e}");
    }
}
