//! The SASL credentials file (`kxgw serve --sasl-users FILE`, written by `kxgw users add` /
//! `kxgw users remove`): per user, one salted SCRAM credential per hash (salt, iterations,
//! StoredKey, ServerKey). Passwords are never stored; PLAIN logins are checked against the
//! SCRAM-SHA-256 credential.
//!
//! ```toml
//! [users.alice.SCRAM-SHA-256]
//! salt = "..."
//! iterations = 4096
//! stored_key = "..."
//! server_key = "..."
//!
//! [users.alice.SCRAM-SHA-512]
//! ...
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::scram::{ScramCredential, ScramHash, MIN_ITERATIONS};

/// One user's credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// For SCRAM-SHA-256 (and PLAIN).
    #[serde(rename = "SCRAM-SHA-256")]
    pub sha256: ScramCredential,
    /// For SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    pub sha512: ScramCredential,
}

impl UserEntry {
    /// Fresh credentials for `password` (random salts, `iterations` rounds).
    pub fn new(password: &str, iterations: u32) -> Self {
        let salt = |n: usize| {
            let mut s = vec![0u8; n];
            rand::thread_rng().fill_bytes(&mut s);
            s
        };
        UserEntry {
            sha256: ScramCredential::derive(ScramHash::Sha256, password, &salt(32), iterations),
            sha512: ScramCredential::derive(ScramHash::Sha512, password, &salt(64), iterations),
        }
    }

    /// The credential for `hash`.
    pub fn get(&self, hash: ScramHash) -> &ScramCredential {
        match hash {
            ScramHash::Sha256 => &self.sha256,
            ScramHash::Sha512 => &self.sha512,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// By user name.
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

impl Users {
    /// Reads `path` (every credential checked: a bad one is an error, not a user who can
    /// never log in).
    pub fn load(path: &Path) -> Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the SASL users file {}", path.display()))?;
        let users: Users = toml::from_str(&text)
            .with_context(|| format!("parsing the SASL users file {}", path.display()))?;
        for (name, e) in &users.users {
            for h in ScramHash::ALL {
                let c = e.get(h);
                if c.iterations < MIN_ITERATIONS {
                    bail!(
                        "{}: user {name:?}: {} iterations {} below {MIN_ITERATIONS}",
                        path.display(),
                        h.mechanism(),
                        c.iterations
                    );
                }
            }
        }
        Ok(users)
    }

    /// Reads `path`, or an empty set if it does not exist yet (for `kxgw users add`).
    pub fn load_or_empty(path: &Path) -> Result<Users> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Users::default())
        }
    }

    /// Writes the file readable by its owner only, replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(self).context("encoding the SASL users file")?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(b"# kxgw SASL users: salted SCRAM credentials, no passwords.\n")?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))
    }

    /// The credential of `user` for `hash`.
    pub fn credential(&self, user: &str, hash: ScramHash) -> Option<&ScramCredential> {
        self.users.get(user).map(|e| e.get(hash))
    }
}

/// Checks a user name as `kxgw users add` accepts it (what SASL PLAIN and SCRAM can carry).
pub fn check_user_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        bail!("user name {name:?}: 1 to 255 characters, no control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_keeps_no_password_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users.toml");
        let mut u = Users::load_or_empty(&p).unwrap();
        u.users
            .insert("alice".into(), UserEntry::new("hunter2", 4096));
        u.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("[users.alice.SCRAM-SHA-256]"), "{text}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Users::load(&p).unwrap();
        assert_eq!(back, u);
        let c = back.credential("alice", ScramHash::Sha512).unwrap();
        assert!(c.verify_password(ScramHash::Sha512, "hunter2"));
        assert!(back.credential("bob", ScramHash::Sha256).is_none());
    }

    #[test]
    fn weak_or_unknown_entries_are_refused_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("u.toml");
        let mut u = Users::default();
        u.users.insert("a".into(), UserEntry::new("x", 4096));
        u.users.get_mut("a").unwrap().sha512.iterations = 1;
        u.save(&p).unwrap();
        let e = format!("{:#}", Users::load(&p).unwrap_err());
        assert!(e.contains("below 4096") && e.contains("u.toml"), "{e}");
        std::fs::write(&p, "[[allow]]\n").unwrap();
        assert!(Users::load(&p).is_err());
        let e = format!("{:#}", Users::load(&d.path().join("nope")).unwrap_err());
        assert!(e.contains("nope"), "{e}");
    }
}
