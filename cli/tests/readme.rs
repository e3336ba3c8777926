//! The README and docs/ show commands to a newcomer; each must work as shown. The five-minute
//! tour is `scripts/tour.sh` (run by `.ci/run`), so its README block must be that script's
//! text; every other command line in a `sh` block must run a script of the repository or a
//! `kxgw` subcommand with flags its `--help` lists, or be exempted below with a reason. Links
//! must point at files that exist, and nothing may point at design notes outside the repo.
//!
//! Written to run from the repository root's tests/ or from a member crate's tests/: the root
//! is the first directory above CARGO_MANIFEST_DIR that holds `.ci/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Command lines of the docs that run neither a repository script nor `kxgw`, each with why
/// it is shown anyway. Compared after joining `\` continuations, dropping the trailing
/// comment and collapsing blanks.
const ALLOWED: &[(&str, &str)] = &[
    (
        "vagrant up",
        "the test VM: CI runs deploy/provision.sh and `vagrant validate` (cli/tests/deploy.rs), \
         not a VM provider",
    ),
    (
        "vagrant ssh -c 'cd /kxgw && sudo scripts/demo.sh'",
        "the demo (run by .ci/run) inside the test VM",
    ),
    (
        "vagrant ssh -c 'cd /kxgw && sudo scripts/bench.sh --quick'",
        "the benchmark (scripts/bench.sh --smoke runs in cli/tests/bench_smoke.rs) inside the VM",
    ),
    (
        "kcat -b 198.18.0.1:9092 -G g1 events",
        "a kcat group member; cli/tests/groups.rs runs kcat -G members against kxgw serve",
    ),
    (
        "cargo install cargo-fuzz --locked",
        "fuzzing needs cargo-fuzz; CI replays the corpus on stable (cli/tests/fuzz_corpus.rs)",
    ),
    ("cd fuzz", "the fuzz targets are their own cargo workspace"),
    (
        "RUSTC_BOOTSTRAP=1 cargo fuzz run -O kafka_request -- -max_total_time=600 \
         -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1",
        "a 10-minute fuzz run; CI replays its corpus (cli/tests/fuzz_corpus.rs)",
    ),
    (
        "RUSTC_BOOTSTRAP=1 cargo fuzz cmin -O kafka_request",
        "corpus maintenance after a fuzz run",
    ),
    (
        "RUSTC_BOOTSTRAP=1 cargo fuzz tmin -O kafka_request fuzz/artifacts/kafka_request/crash-...",
        "minimising a crash a fuzz run found (the file name is the run's)",
    ),
    (
        "KXGW_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus",
        "rewrites the seed inputs; the same test runs in CI without the variable",
    ),
    (
        "KXGW_XDP_PACKETS=1000000 cargo test --test xdp_verdicts -- --nocapture",
        "the long variant of a test CI runs with 200,000 frames",
    ),
    (
        "KXGW_SOAK_SECS=600 cargo test --test soak -- --nocapture",
        "the long variant of a test CI runs for 30 s",
    ),
];

/// Marks the README's tour block (the next fenced block).
const TOUR_MARK: &str = "<!-- tour: scripts/tour.sh -->";

fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join(".ci").is_dir() {
            return dir;
        }
        assert!(
            dir.pop(),
            "no directory holding .ci/ above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// README.md and every docs/*.md, as (path relative to the root, text).
fn documents(root: &Path) -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("reading docs/")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(root.join(&n))
                .unwrap_or_else(|e| panic!("reading {n}: {e}"));
            (n, text)
        })
        .collect()
}

/// One fenced shell block: its first line number (1-based) and its raw lines.
struct Block {
    line: usize,
    lines: Vec<String>,
    tour: bool,
}

fn shell_blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut marked = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None => {
                    let shell = matches!(info.trim(), "sh" | "bash" | "shell" | "console");
                    if shell || marked {
                        current = Some(Block {
                            line: i + 2,
                            lines: Vec::new(),
                            tour: marked,
                        });
                    } else {
                        // A non-shell block: skip to its end.
                        current = Some(Block {
                            line: 0,
                            lines: Vec::new(),
                            tour: false,
                        });
                    }
                    marked = false;
                }
            }
            continue;
        }
        match current.as_mut() {
            Some(b) if b.line > 0 => b.lines.push(l.to_string()),
            Some(_) => {}
            None => {
                if !t.is_empty() {
                    marked = t == TOUR_MARK;
                }
            }
        }
    }
    out.retain(|b| b.line > 0);
    out
}

/// Command lines of a block: `\` continuations joined, comments and output (`#` lines) out.
fn command_lines(b: &Block) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut acc = String::new();
    let mut start = 0;
    for (i, l) in b.lines.iter().enumerate() {
        if acc.is_empty() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            start = b.line + i;
        }
        match l.trim_end().strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
            }
            None => {
                acc.push_str(l);
                out.push((start, std::mem::take(&mut acc)));
            }
        }
    }
    if !acc.is_empty() {
        out.push((start, acc));
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    /// `|`, `||`, `&&`, `;`, `&`: ends a command.
    Op(String),
}

/// Shell words with quotes removed, up to an unquoted comment. Good enough for doc lines.
fn tokenize(line: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(q),
                    }
                }
            }
            '#' if !in_word => break,
            '|' | '&' | ';' if !(c == '&' && word.ends_with('>')) => {
                if in_word {
                    out.push(Tok::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
                let mut op = c.to_string();
                if c != ';' && chars.peek() == Some(&c) {
                    op.push(c);
                    chars.next();
                }
                out.push(Tok::Op(op));
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(Tok::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(Tok::Word(word));
    }
    out
}

fn normalize(line: &str) -> String {
    let mut s = String::new();
    let mut quote = None;
    let mut prev_space = false;
    for c in line.chars() {
        match quote {
            Some(q) => {
                s.push(c);
                if c == q {
                    quote = None;
                }
                continue;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && (prev_space || s.is_empty()) => break,
            None => {}
        }
        if c.is_whitespace() {
            if !prev_space && !s.is_empty() {
                s.push(' ');
            }
            prev_space = true;
        } else {
            s.push(c);
            prev_space = false;
        }
    }
    s.trim_end().to_string()
}

/// The commands of a line: the first command of each pipeline (later stages are filters).
fn commands(toks: &[Tok]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut in_filter = false;
    for t in toks {
        match t {
            Tok::Word(w) if !in_filter => cur.push(w.clone()),
            Tok::Word(_) => {}
            Tok::Op(op) => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                in_filter = op == "|";
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Drops what runs the command rather than being it: `sudo`, `VAR=value`, `ip netns exec NS`,
/// shell keywords.
fn strip_prefixes(mut words: &[String]) -> &[String] {
    loop {
        match words {
            [w, rest @ ..]
                if matches!(
                    w.as_str(),
                    "sudo" | "exec" | "until" | "while" | "if" | "do" | "then" | "!"
                ) || is_assignment(w) =>
            {
                words = rest
            }
            [ip, netns, exec, _ns, rest @ ..]
                if ip == "ip" && netns == "netns" && exec == "exec" =>
            {
                words = rest
            }
            _ => return words,
        }
    }
}

/// `NAME=value` before a command.
fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn long_flags(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        if boundary && b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_lowercase() {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-') {
                j += 1;
            }
            out.push(text[i..j].to_string());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn flags_of_line(words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

struct Checker {
    root: PathBuf,
    help: HashMap<String, Result<Vec<String>, String>>,
}

impl Checker {
    /// The long flags `kxgw <sub> --help` lists (`sub` empty: the top level).
    fn kxgw_flags(&mut self, sub: &str) -> Result<Vec<String>, String> {
        self.help
            .entry(sub.to_string())
            .or_insert_with(|| {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_kxgw"));
                if !sub.is_empty() {
                    cmd.arg(sub);
                }
                let out = cmd.arg("--help").output().map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "`kxgw {sub} --help` failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                let mut f = long_flags(&String::from_utf8_lossy(&out.stdout));
                f.extend(["--help".to_string(), "--version".to_string()]);
                Ok(f)
            })
            .clone()
    }

    /// Ok(true): a script or kxgw command that checks out; Ok(false): neither (the caller
    /// decides); Err: a script or kxgw command that is wrong.
    fn check(&mut self, words: &[String]) -> Result<bool, String> {
        let words = strip_prefixes(words);
        let Some((prog, args)) = words.split_first() else {
            return Ok(true);
        };
        let is_kxgw = matches!(
            prog.as_str(),
            "kxgw" | "$K" | "target/release/kxgw" | "target/debug/kxgw" | "/usr/local/bin/kxgw"
        );
        if is_kxgw {
            let sub = match args.first() {
                Some(s) if !s.starts_with('-') => s.as_str(),
                _ => "",
            };
            let known = self.kxgw_flags(sub)?;
            for f in flags_of_line(args) {
                if !known.contains(&f) {
                    return Err(format!("`kxgw {sub} --help` has no {f}"));
                }
            }
            return Ok(true);
        }
        let script = prog.contains('/') && (prog.ends_with(".sh") || prog.as_str() == ".ci/run");
        if !script {
            return Ok(false);
        }
        let path = self.root.join(prog);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{prog}: {e}"))?;
        let exec = std::fs::metadata(&path).map_err(|e| format!("{prog}: {e}"))?;
        if std::os::unix::fs::PermissionsExt::mode(&exec.permissions()) & 0o111 == 0 {
            return Err(format!("{prog} is not executable"));
        }
        // A script that hands its arguments to `kxgw <sub>` takes that subcommand's flags.
        let mut known = long_flags(&text);
        for (i, _) in text.match_indices("kxgw ") {
            let rest = &text[i + 5..];
            if let Some((sub, tail)) = rest.split_once(' ') {
                if tail.starts_with("\"$@\"") && !sub.is_empty() {
                    known.extend(self.kxgw_flags(sub)?);
                }
            }
        }
        for f in flags_of_line(args) {
            if !known.contains(&f) {
                return Err(format!("{prog} does not take {f}"));
            }
        }
        Ok(true)
    }
}

/// The tour lines of scripts/tour.sh (between its begin and end markers).
fn tour_script(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("scripts/tour.sh")).expect("scripts/tour.sh");
    let mut lines = text.lines();
    let begin = lines.position(|l| l == "# tour: begin");
    assert!(
        begin.is_some(),
        "scripts/tour.sh has no `# tour: begin` line"
    );
    let body: Vec<String> = lines
        .by_ref()
        .take_while(|l| *l != "# tour: end")
        .map(str::to_string)
        .collect();
    assert!(
        text.contains("\n# tour: end\n"),
        "scripts/tour.sh has no `# tour: end` line"
    );
    body
}

#[test]
fn readme_tour_is_scripts_tour_sh_and_ci_runs_it() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let tours: Vec<Block> = shell_blocks(&readme)
        .into_iter()
        .filter(|b| b.tour)
        .collect();
    assert_eq!(
        tours.len(),
        1,
        "README.md must have exactly one block after `{TOUR_MARK}`"
    );
    let script = tour_script(&root);
    assert!(!script.is_empty(), "scripts/tour.sh has an empty tour");
    assert_eq!(
        tours[0].lines, script,
        "README.md's tour block (line {}) differs from scripts/tour.sh's tour lines: \
         copy them over",
        tours[0].line
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/tour.sh"),
        ".ci/run must run scripts/tour.sh"
    );
}

#[test]
fn every_doc_command_runs_a_script_or_a_kxgw_flag_that_exists() {
    let root = repo_root();
    let mut checker = Checker {
        root: root.clone(),
        help: HashMap::new(),
    };
    let mut problems = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    let mut checked = 0;
    for (name, text) in documents(&root) {
        for block in shell_blocks(&text) {
            for (line, cmd) in command_lines(&block) {
                let norm = normalize(&cmd);
                if let Some(i) = ALLOWED.iter().position(|(l, _)| *l == norm) {
                    used[i] = true;
                    continue;
                }
                for words in commands(&tokenize(&cmd)) {
                    match checker.check(&words) {
                        Ok(true) => checked += 1,
                        // The tour runs whole in CI: its shell glue needs no exemption.
                        Ok(false) if block.tour => {}
                        Ok(false) => problems.push(format!(
                            "{name}:{line}: `{norm}` runs neither a repository script nor kxgw: \
                             make a script or test run it, or add it to ALLOWED with a reason"
                        )),
                        Err(e) => problems.push(format!("{name}:{line}: `{norm}`: {e}")),
                    }
                }
            }
        }
    }
    for (i, (l, _)) in ALLOWED.iter().enumerate() {
        if !used[i] {
            problems.push(format!("ALLOWED entry no doc shows any more: `{l}`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked > 20,
        "only {checked} doc commands checked: is the parser broken?"
    );
}

#[test]
fn doc_links_point_at_files_that_exist() {
    let root = repo_root();
    let mut problems = Vec::new();
    for (name, text) in documents(&root) {
        let base = root.join(&name);
        let dir = base.parent().expect("a document's directory");
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !dir.join(target).exists() {
                problems.push(format!("{name}: link to {target}, which does not exist"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn nothing_refers_to_design_notes_outside_the_repository() {
    let root = repo_root();
    // Spelled in pieces so this file does not match itself.
    let needles = [
        format!("{}{}", "DESIGN", ".md"),
        format!("{}{}", "../", "shared"),
    ];
    let mut hits = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading a repository directory") {
            let path = entry.expect("directory entry").path();
            let rel = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let skip = [
                ".git",
                "target",
                "fuzz/corpus",
                "fuzz/regressions",
                "fuzz/artifacts",
            ];
            if skip
                .iter()
                .any(|s| rel == *s || rel.ends_with(&format!("/{s}")))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                for n in &needles {
                    if text.contains(n.as_str()) {
                        hits.push(format!("{rel} mentions {n}"));
                    }
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "what the code relies on belongs in the repository's own docs:\n{}",
        hits.join("\n")
    );
}

#[cfg(test)]
mod parser {
    use super::*;

    #[test]
    fn tokens_commands_and_prefixes() {
        let t = tokenize("ip netns exec a $K consume --format '%p # %o' --x=1 | wc -l # note");
        let c = commands(&t);
        assert_eq!(c.len(), 1);
        assert_eq!(
            strip_prefixes(&c[0]),
            ["$K", "consume", "--format", "%p # %o", "--x=1"].map(String::from)
        );
        assert_eq!(flags_of_line(&c[0]), ["--format", "--x"]);
        let t = tokenize("until $K stats >/dev/null 2>&1; do sleep 0.2; kill -0 %1 || break; done");
        let c = commands(&t);
        assert_eq!(c.len(), 5, "{c:?}");
        assert_eq!(strip_prefixes(&c[0])[0], "$K");
        assert_eq!(normalize("  a   'b  c'  # x"), "a 'b  c'");
        assert_eq!(
            long_flags("  --log-dir <D>  x--no --a1"),
            ["--log-dir", "--a1"]
        );
    }
}
