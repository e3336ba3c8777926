//! `kxgw serve --config FILE`: a TOML file of the same settings as the flags.
//!
//! Every key is a `kxgw serve` flag with dashes turned into underscores (`log_dir`,
//! `kafka_listen`, `xdp_iface`...). Rather than a second, parallel settings struct, the file is
//! turned into flags placed in front of the command line's own, so clap validates both the same
//! way and a flag given on the command line wins over the file.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Expands `--config FILE` of the `serve` subcommand in `argv` into flags. `known` lists the
/// long flag names (`log-dir`...) the subcommand accepts; an unknown key is an error naming the
/// file and the key. Anything else in `argv` is left as it is.
pub fn expand_serve_config(argv: Vec<OsString>, known: &[String]) -> Result<Vec<OsString>> {
    let Some(serve_at) = argv.iter().position(|a| a == "serve") else {
        return Ok(argv);
    };
    let mut path = None;
    for (i, a) in argv.iter().enumerate().skip(serve_at + 1) {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = argv.get(i + 1).cloned();
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(OsString::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(argv);
    };
    let given: Vec<String> = argv[serve_at + 1..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let from_file = flags_from_file(Path::new(&path), known, &given)?;
    let mut out: Vec<OsString> = argv[..=serve_at].to_vec();
    out.extend(from_file);
    out.extend(argv[serve_at + 1..].iter().cloned());
    Ok(out)
}

/// The flags a config file stands for, minus those the command line gives itself.
fn flags_from_file(path: &Path, known: &[String], given: &[String]) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" || !known.contains(&flag) {
            bail!(
                "config file {}: unknown key `{key}` (keys are `kxgw serve` flags with \
                 underscores, e.g. log_dir, kafka_listen)",
                path.display()
            );
        }
        if given.contains(&flag) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            v => vec![v],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => flags.push(format!("--{flag}").into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => {
                    flags.push(format!("--{flag}").into());
                    flags.push(s.into());
                }
                toml::Value::Integer(n) => {
                    flags.push(format!("--{flag}").into());
                    flags.push(n.to_string().into());
                }
                toml::Value::Float(x) => {
                    flags.push(format!("--{flag}").into());
                    flags.push(x.to_string().into());
                }
                other => bail!(
                    "config file {}: key `{key}` has a {} value; use a string, number, \
                     boolean or an array of those",
                    path.display(),
                    other.type_str()
                ),
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn known() -> Vec<String> {
        [
            "log-dir",
            "kafka-listen",
            "io",
            "require-xdp",
            "allow",
            "config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn file_keys_become_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kxgw.toml");
        std::fs::write(
            &f,
            "log_dir = \"/logs\"\nio = \"copy\"\nrequire_xdp = true\nallow = [\"198.18.0.0/15\", \"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let out = expand_serve_config(
            argv(&[
                "kxgw",
                "serve",
                "--config",
                f.to_str().unwrap(),
                "--io",
                "sendfile",
            ]),
            &known(),
        )
        .unwrap();
        let out: Vec<String> = out.into_iter().map(|s| s.into_string().unwrap()).collect();
        assert_eq!(out[..2], ["kxgw", "serve"]);
        let joined = out.join(" ");
        assert!(joined.contains("--log-dir /logs"), "{joined}");
        assert!(joined.contains("--require-xdp"), "{joined}");
        assert!(
            joined.contains("--allow 198.18.0.0/15 --allow 10.0.0.0/8"),
            "{joined}"
        );
        assert!(
            !joined.contains("--io copy"),
            "the command line's --io wins: {joined}"
        );
        assert!(joined.ends_with("--io sendfile"), "{joined}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "log_dri = \"/logs\"\n").unwrap();
        let err = expand_serve_config(
            argv(&["kxgw", "serve", "--config", f.to_str().unwrap()]),
            &known(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.toml") && msg.contains("log_dri"), "{msg}");
    }

    #[test]
    fn missing_file_says_which() {
        let err = expand_serve_config(
            argv(&["kxgw", "serve", "--config=/nonexistent/kxgw.toml"]),
            &known(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/kxgw.toml"));
    }

    #[test]
    fn other_subcommands_are_untouched() {
        let a = argv(&["kxgw", "inspect", "--config", "x"]);
        assert_eq!(expand_serve_config(a.clone(), &known()).unwrap(), a);
    }
}
