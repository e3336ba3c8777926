//! Throwaway test hosts: two network namespaces joined by a veth pair.
//!
//! Tests, benchmarks and the demo all build their network with this one module so the
//! conventions hold everywhere: names carry a per-run suffix (tests run in parallel),
//! addresses come from the benchmarking range 198.18.0.0/15, there is no default route,
//! and the namespaces (with the veth inside them and any XDP program attached to it) are
//! removed on drop, panics included.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Gateway side address (inside the gateway namespace).
pub const GW_ADDR: &str = "198.18.0.1";
/// Consumer side address (inside the consumer namespace).
pub const CLIENT_ADDR: &str = "198.18.0.2";
/// Prefix length of the point-to-point link.
pub const PREFIX: u8 = 30;

/// Two namespaces joined by a veth pair. Dropping it deletes both namespaces.
#[derive(Debug)]
pub struct TestNet {
    /// Namespace that runs the gateway.
    pub gw_ns: String,
    /// Namespace that runs the consumers.
    pub client_ns: String,
    /// veth end inside `gw_ns`.
    pub gw_if: String,
    /// veth end inside `client_ns`.
    pub client_if: String,
    /// MTU configured on both ends.
    pub mtu: u32,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with the given arguments and fails with its stderr when it fails.
pub fn ip<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Fails loudly unless we run as root: the network tests need it and must never skip.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "this needs root (CAP_NET_ADMIN, CAP_BPF) to create network namespaces, veth pairs \
             and attach XDP; run it as root (CI does)"
        );
    }
    Ok(())
}

impl TestNet {
    /// Creates the pair with the given MTU on both ends. `tag` is a short label for the
    /// names (e.g. the test name); a per-process, per-call suffix keeps runs apart.
    pub fn new(tag: &str, mtu: u32) -> Result<TestNet> {
        require_root()?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("{}{}", std::process::id() % 100_000, seq);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(6)
            .collect();
        // Interface names are limited to 15 bytes.
        let short = format!("{tag}{suffix}");
        let short = &short[short.len().saturating_sub(11)..];
        let net = TestNet {
            gw_ns: format!("kxgw-{tag}-{suffix}-gw"),
            client_ns: format!("kxgw-{tag}-{suffix}-cl"),
            gw_if: format!("g{short}"),
            client_if: format!("c{short}"),
            mtu,
        };
        // From here on, Drop cleans up whatever part was created.
        net.setup().with_context(|| {
            format!(
                "setting up namespaces {} / {} (MTU {mtu})",
                net.gw_ns, net.client_ns
            )
        })?;
        Ok(net)
    }

    fn setup(&self) -> Result<()> {
        ip(["netns", "add", &self.gw_ns])?;
        ip(["netns", "add", &self.client_ns])?;
        ip([
            "link",
            "add",
            &self.gw_if,
            "netns",
            &self.gw_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &self.client_ns,
        ])?;
        let mtu = self.mtu.to_string();
        for (ns, ifname, addr) in [
            (&self.gw_ns, &self.gw_if, GW_ADDR),
            (&self.client_ns, &self.client_if, CLIENT_ADDR),
        ] {
            let cidr = format!("{addr}/{PREFIX}");
            ip(["-n", ns, "link", "set", "lo", "up"])?;
            ip(["-n", ns, "link", "set", ifname, "mtu", &mtu])?;
            ip(["-n", ns, "addr", "add", &cidr, "dev", ifname])?;
            ip(["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// A command that runs `program` in the gateway namespace.
    pub fn gw_command(&self, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.gw_ns, program)
    }

    /// A command that runs `program` in the consumer namespace.
    pub fn client_command(&self, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.client_ns, program)
    }

    /// Runs a shell command line in `ns` and returns its output, failing on a non-zero exit.
    pub fn sh_in(ns: &str, script: &str) -> Result<Output> {
        let out = Self::command_in(ns, "sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{script}` in {ns}"))?;
        if !out.status.success() {
            bail!(
                "`{script}` in {ns} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Drops `percent`% of incoming packets in the consumer namespace with an nft
    /// `numgen random` rule (this kernel has no netem).
    pub fn inject_client_loss(&self, percent: u32) -> Result<()> {
        // One statement per line: nft 1.0.6 (Debian 12) rejects `drop; }` on one line.
        let rules = format!(
            "table inet kxgwloss {{\n chain input {{\n  type filter hook input priority -300;\n  \
             numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let out = Self::command_in(&self.client_ns, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(rules.as_bytes())?;
                }
                child.wait_with_output()
            })
            .context("running nft (package nftables)")?;
        if !out.status.success() {
            bail!(
                "installing the loss rule failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether an XDP program is attached to the gateway-side veth (`ip link` view).
    pub fn gw_has_xdp(&self) -> Result<bool> {
        let out = ip(["-n", &self.gw_ns, "-d", "link", "show", "dev", &self.gw_if])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.contains("prog/xdp") || text.contains("xdpgeneric") || text.contains("xdpdrv"))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it (and so the whole pair),
        // and with it any XDP program attached there. Processes still running in it keep
        // it alive, so tests kill their children before dropping the net.
        for ns in [&self.gw_ns, &self.client_ns] {
            if let Err(e) = ip(["netns", "del", ns.as_str()]) {
                if !e.to_string().contains("No such file") {
                    eprintln!("warning: cleaning up namespace {ns}: {e:#}");
                }
            }
        }
    }
}

/// A child process that is killed (and reaped) when dropped, so a failing test never
/// leaves a gateway running inside a namespace it is about to delete.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Sends SIGTERM and waits up to `timeout` for a clean exit; SIGKILL after that.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                self.0.kill()?;
                return Ok(self.0.wait()?);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl KillOnDrop {
    /// Waits up to `timeout` for the child to exit on its own and returns its exit status
    /// with everything it wrote to a piped stdout; `None` (child still running) on timeout.
    pub fn wait_output(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Option<(std::process::ExitStatus, String)>> {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.0.try_wait()? {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut text = String::new();
        if let Some(mut out) = self.0.stdout.take() {
            use std::io::Read;
            out.read_to_string(&mut text)?;
        }
        Ok(Some((status, text)))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
