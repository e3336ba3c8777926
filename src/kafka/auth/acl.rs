//! Topic and group authorization from an ACL file (`kxgw serve --acl FILE`). Once a file is
//! given, everything not allowed is denied:
//!
//! ```toml
//! [[allow]]
//! principal = "User:alice"        # or "User:*" (any principal, ANONYMOUS included)
//! topics = ["t", "orders.*"]      # Describe + Read; "x*" is a prefix, "*" every topic
//! groups = ["app"]                # consumer groups it may use (same patterns)
//! ```
//!
//! Principals are `User:<SASL user>`, `User:ANONYMOUS` on listeners without SASL (as Kafka).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A literal name, a prefix (`orders.*`), or every name (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Literal(String),
    /// Names starting with this.
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern> {
        if s.is_empty() {
            bail!("empty name pattern");
        }
        match s.strip_suffix('*') {
            Some(p) if p.contains('*') => bail!("pattern {s:?}: '*' only at the end"),
            Some(p) => Ok(Pattern::Prefix(p.to_string())),
            None if s.contains('*') => bail!("pattern {s:?}: '*' only at the end"),
            None => Ok(Pattern::Literal(s.to_string())),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Literal(l) => l == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    principal: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    allow: Vec<FileEntry>,
}

/// One `[[allow]]` entry.
#[derive(Clone, Debug)]
pub struct Allow {
    /// `User:name`, or None for `User:*`.
    principal: Option<String>,
    topics: Vec<Pattern>,
    groups: Vec<Pattern>,
}

/// The parsed ACL file.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    allow: Vec<Allow>,
}

impl Acl {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Acl> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the ACL file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the ACL file {}", path.display()))
    }

    /// Parses ACL text.
    pub fn parse(text: &str) -> Result<Acl> {
        let file: File = toml::from_str(text)?;
        let mut allow = Vec::new();
        for (i, e) in file.allow.into_iter().enumerate() {
            let ctx = || format!("[[allow]] entry {} ({})", i + 1, e.principal);
            let Some(name) = e.principal.strip_prefix("User:") else {
                bail!(
                    "[[allow]] entry {}: principal {:?} must be User:<name> or User:*",
                    i + 1,
                    e.principal
                );
            };
            let patterns = |v: &[String]| -> Result<Vec<Pattern>> {
                v.iter().map(|s| Pattern::parse(s)).collect()
            };
            allow.push(Allow {
                principal: (name != "*").then(|| e.principal.clone()),
                topics: patterns(&e.topics).with_context(ctx)?,
                groups: patterns(&e.groups).with_context(ctx)?,
            });
        }
        Ok(Acl { allow })
    }

    fn entries<'a>(&'a self, principal: &'a str) -> impl Iterator<Item = &'a Allow> + 'a {
        self.allow
            .iter()
            .filter(move |a| a.principal.as_deref().is_none_or(|p| p == principal))
    }

    /// Whether `principal` may describe and read `topic`.
    pub fn topic(&self, principal: &str, topic: &str) -> bool {
        self.entries(principal)
            .any(|a| a.topics.iter().any(|p| p.matches(topic)))
    }

    /// Whether `principal` may use consumer group `group`.
    pub fn group(&self, principal: &str, group: &str) -> bool {
        self.entries(principal)
            .any(|a| a.groups.iter().any(|p| p.matches(group)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefix_and_wildcard_principals() {
        let acl = Acl::parse(
            r#"
            [[allow]]
            principal = "User:alice"
            topics = ["t", "orders.*"]
            groups = ["g"]
            [[allow]]
            principal = "User:*"
            topics = ["public"]
            "#,
        )
        .unwrap();
        let a = "User:alice";
        assert!(acl.topic(a, "t") && acl.topic(a, "orders.eu") && acl.topic(a, "public"));
        assert!(!acl.topic(a, "u") && !acl.topic(a, "orders") && !acl.topic(a, "tt"));
        assert!(acl.group(a, "g") && !acl.group(a, "g2"));
        assert!(acl.topic("User:bob", "public") && !acl.topic("User:bob", "t"));
        assert!(!acl.group("User:ANONYMOUS", "g"));
        assert!(
            !Acl::default().topic(a, "t"),
            "an empty file denies everything"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, want) in [
            ("[[allow]]\nprincipal = \"alice\"\n", "User:<name>"),
            (
                "[[allow]]\nprincipal = \"User:a\"\ntopics = [\"a*b\"]\n",
                "only at the end",
            ),
            (
                "[[allow]]\nprincipal = \"User:a\"\ntopic = [\"t\"]\n",
                "unknown field",
            ),
            ("[[deny]]\n", "unknown field"),
        ] {
            let e = format!("{:#}", Acl::parse(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
