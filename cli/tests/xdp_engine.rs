//! End-to-end tests of the AF_XDP engine in two namespaces joined by a veth pair, with the
//! raw echo/generator service (`kxgw xdp-raw`): no fetch protocol, no log, just the fast path.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{forward_lines, in_ns, printed_counter, PipedGateway};
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const PORT: u16 = 9093;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_kxgw")
}

/// `kxgw xdp-raw` with its stdout lines (started below).
type Gateway = PipedGateway;

impl Gateway {
    fn start(net: &TestNet, extra: &[&str]) -> Gateway {
        Gateway::start_on(net, &net.gw_if, GW_ADDR, extra)
    }

    fn start_on(net: &TestNet, iface: &str, addr: &str, extra: &[&str]) -> Gateway {
        let mut cmd = net.gw_command(exe());
        cmd.args(["xdp-raw", "--listen", &format!("{addr}:{PORT}")])
            .args(["--xdp-iface", iface, "--arena-mib", "16"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child: Child = cmd.spawn().expect("spawning kxgw xdp-raw");
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        forward_lines(out, tx, None);
        let mut child = KillOnDrop(child);
        let banner = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let status = child.terminate(Duration::from_secs(1));
                panic!("kxgw xdp-raw did not come up (exit: {status:?})");
            }
        };
        assert!(banner.contains("serving"), "unexpected banner: {banner}");
        Gateway {
            child,
            lines: rx,
            banner,
            name: "gateway",
        }
    }
}

fn echo(net: &TestNet, msg: &'static [u8]) -> Option<Vec<u8>> {
    echo_to(net, GW_ADDR, msg)
}

fn echo_to(net: &TestNet, addr: &str, msg: &'static [u8]) -> Option<Vec<u8>> {
    let server: SocketAddr = format!("{addr}:{PORT}").parse().unwrap();
    in_ns(&net.client_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..6 {
            sock.send_to(msg, server).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(from, server, "reply from the served endpoint");
                return Some(buf[..n].to_vec());
            }
        }
        None
    })
}

fn generate(net: &TestNet, bytes: u64, size: usize) -> String {
    generate_from(net, GW_ADDR, bytes, size)
}

fn generate_from(net: &TestNet, addr: &str, bytes: u64, size: usize) -> String {
    let out = net
        .client_command(exe())
        .args(["xdp-raw-client", "--server", &format!("{addr}:{PORT}")])
        .args(["--bytes", &bytes.to_string(), "--size", &size.to_string()])
        .output()
        .expect("running kxgw xdp-raw-client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{bytes} bytes verified")), "{text}");
    text
}

#[test]
fn echo_and_generator_with_each_tx_strategy() {
    let net = TestNet::new("xdpstr", 1500).unwrap();
    for strategy in ["copy", "sg", "auto"] {
        // Each round rebinds the queue right after the previous socket closed (EBUSY retry).
        let gw = Gateway::start(&net, &["--tx-strategy", strategy]);
        assert!(
            gw.banner.contains("bind mode copy"),
            "veth binds in copy mode: {}",
            gw.banner
        );
        assert!(net.gw_has_xdp().unwrap(), "ip link shows the XDP program");
        assert_eq!(echo(&net, b"kxgw echo").as_deref(), Some(&b"kxgw echo"[..]));
        let report = generate(&net, 24 << 20, 1472);
        eprintln!("strategy {strategy}: {report}");
        let stats = gw.stop();
        assert!(printed_counter(&stats, "steered") >= 2, "{stats}");
        assert_eq!(printed_counter(&stats, "tx_invalid_descs"), 0, "{stats}");
        assert_eq!(printed_counter(&stats, "oversize"), 0, "{stats}");
        let (sg, copy) = (
            printed_counter(&stats, "tx_sg"),
            printed_counter(&stats, "tx_copy"),
        );
        match strategy {
            "sg" => assert!(sg > 17_000, "{stats}"),
            // Copy mode + 1500 MTU: auto picks one descriptor + memcpy.
            _ => assert_eq!(sg, 0, "{stats}"),
        }
        assert!(copy >= 1, "{stats}");
    }
}

#[test]
fn jumbo_mtus_use_multi_buffer_within_18_descriptors() {
    for mtu in [9000u32, 65535] {
        let net = TestNet::new("xdpjumbo", mtu).unwrap();
        for strategy in ["sg", "copy"] {
            let gw = Gateway::start(&net, &["--tx-strategy", strategy]);
            assert!(gw.banner.contains(&format!("MTU {mtu}")), "{}", gw.banner);
            let size = mtu as usize - 28 - 16;
            let report = generate(&net, 32 << 20, size);
            eprintln!("MTU {mtu} strategy {strategy}: {report}");
            let stats = gw.stop();
            assert_eq!(printed_counter(&stats, "tx_invalid_descs"), 0, "{stats}");
            let packets = printed_counter(&stats, "tx_packets");
            let descs = printed_counter(&stats, "tx_descs");
            assert!(descs > packets, "jumbo datagrams are multi-buffer: {stats}");
            assert!(descs <= packets * 18, "{stats}");
        }
    }
}

#[test]
fn arp_and_tcp_pass_while_xdp_is_attached() {
    let net = TestNet::new("xdparp", 1500).unwrap();
    let gw = Gateway::start(&net, &[]);
    // Forget the neighbour entry so the connection below needs a fresh ARP exchange.
    kxgw_testkit::testnet::ip(["-n", &net.client_ns, "neigh", "flush", "all"]).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let gw_ns = net.gw_ns.clone();
    let server = std::thread::spawn(move || {
        in_ns(&gw_ns, move || {
            let l = TcpListener::bind((GW_ADDR, 9092)).unwrap();
            ready_tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let got = in_ns(&net.client_ns, || {
        let mut s = TcpStream::connect_timeout(
            &format!("{GW_ADDR}:9092").parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        s.write_all(b"kafka").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&got, b"kafka");
    server.join().unwrap();
    // The fetch endpoint is still served next to it.
    assert_eq!(
        echo(&net, b"still here").as_deref(),
        Some(&b"still here"[..])
    );
    let stats = gw.stop();
    assert!(
        printed_counter(&stats, "passed") >= 3,
        "ARP and TCP passed to the kernel: {stats}"
    );
    assert_eq!(printed_counter(&stats, "dropped_malformed"), 0, "{stats}");
}

#[test]
fn sigkill_leaves_no_xdp_program_and_a_new_gateway_serves() {
    let net = TestNet::new("xdpkill", 1500).unwrap();
    let mut gw = Gateway::start(&net, &[]);
    assert!(net.gw_has_xdp().unwrap());
    assert_eq!(echo(&net, b"one").as_deref(), Some(&b"one"[..]));
    gw.kill_and_expect_xdp_detached(&net);
    let gw2 = Gateway::start(&net, &[]);
    assert!(net.gw_has_xdp().unwrap());
    assert_eq!(echo(&net, b"two").as_deref(), Some(&b"two"[..]));
    gw2.stop();
}

#[test]
fn allowlist_drops_requests_from_unlisted_consumers() {
    let net = TestNet::new("xdpacl", 1500).unwrap();
    let gw = Gateway::start(
        &net,
        &["--allow", "198.18.0.1/32", "--allow", "2001:db8::/32"],
    );
    assert_eq!(echo(&net, b"nope"), None);
    let stats = gw.stop();
    assert!(printed_counter(&stats, "dropped_acl") >= 1, "{stats}");
    assert_eq!(printed_counter(&stats, "steered"), 0, "{stats}");

    let gw = Gateway::start(&net, &["--allow", "198.18.0.0/30"]);
    assert_eq!(echo(&net, b"yes").as_deref(), Some(&b"yes"[..]));
    gw.stop();
}

#[test]
fn two_queues_share_one_umem_and_busy_polling_serves() {
    let net = TestNet::new("xdpmq", 1500).unwrap();
    // A second veth pair with two RX/TX queues per end, inside the same namespaces.
    let (g, c) = (format!("{}m", net.gw_if), format!("{}m", net.client_if));
    kxgw_testkit::testnet::ip([
        "-n",
        &net.gw_ns,
        "link",
        "add",
        &g,
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        &c,
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "netns",
        &net.client_ns,
    ])
    .unwrap();
    for (ns, dev, addr) in [
        (&net.gw_ns, &g, "198.18.0.5/30"),
        (&net.client_ns, &c, "198.18.0.6/30"),
    ] {
        kxgw_testkit::testnet::ip(["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        kxgw_testkit::testnet::ip(["-n", ns, "link", "set", dev, "up"]).unwrap();
    }
    for extra in [&[][..], &["--busy-poll"][..]] {
        let gw = Gateway::start_on(&net, &g, "198.18.0.5", extra);
        assert!(gw.banner.contains("2 queue(s)"), "{}", gw.banner);
        assert_eq!(
            echo_to(&net, "198.18.0.5", b"mq").as_deref(),
            Some(&b"mq"[..])
        );
        // Several client sockets: flows spread over the queues.
        for _ in 0..4 {
            generate_from(&net, "198.18.0.5", 4 << 20, 1472);
        }
        let stats = gw.stop();
        assert_eq!(printed_counter(&stats, "tx_invalid_descs"), 0, "{stats}");
        assert!(printed_counter(&stats, "steered") >= 5, "{stats}");
    }
}

#[test]
fn ipv6_requests_get_checksummed_replies() {
    let net = TestNet::new("xdpv6", 1500).unwrap();
    for (ns, dev, addr) in [
        (&net.gw_ns, &net.gw_if, "2001:db8::1/64"),
        (&net.client_ns, &net.client_if, "2001:db8::2/64"),
    ] {
        kxgw_testkit::testnet::ip(["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]).unwrap();
    }
    let gw = Gateway::start_on(
        &net,
        &net.gw_if.clone(),
        "[2001:db8::1]",
        &["--tx-strategy", "sg"],
    );
    // The kernel drops IPv6 UDP with a wrong (or zero) checksum: every byte arriving proves it.
    let report = generate_from(&net, "[2001:db8::1]", 8 << 20, 1452);
    eprintln!("IPv6: {report}");
    let stats = gw.stop();
    assert!(printed_counter(&stats, "steered") > 0, "{stats}");
    assert!(printed_counter(&stats, "tx_sg") > 5000, "{stats}");
}
