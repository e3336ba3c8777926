//! Faults around a real `kxgw serve` in a test namespace: consumers that vanish in the middle
//! of a response (TCP and UDP), the gateway SIGKILLed under load and restarted, a segment
//! deleted by retention while it is being sent, a torn tail, a checkpoint file that is missing
//! or garbage. Every byte a consumer receives is checked (CRC, offsets in sequence).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::*;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

/// Starts a gateway that also serves the fetch protocol (`--fetch-listen`), with `extra`
/// flags; returns it and its fetch endpoint.
fn start_fetch_gateway(
    net: &TestNet,
    dir: &Path,
    work: &Path,
    extra: &[&str],
) -> (Gateway, String) {
    let fetch_addr = format!("{GW_ADDR}:9093");
    let args = [&["--fetch-listen", fetch_addr.as_str()], extra].concat();
    (Gateway::start_with(net, dir, work, &args), fetch_addr)
}

/// `kxgw consume --fetch` of `topic`-`partition` from the beginning, verified, in the consumer
/// namespace with its output piped; `extra` adds the count, format and the like.
fn verified_consume(
    net: &TestNet,
    fetch_addr: &str,
    topic: &str,
    partition: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut c = net.client_command(KXGW);
    c.args(["consume", "--fetch", fetch_addr, "--topic", topic])
        .args(["--partition", partition, "--from-beginning", "--verify"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Stops the gateway (which must exit cleanly) and checks that nothing in it panicked.
fn stop_without_panic(gw: Gateway) {
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Waits until `f` holds (up to `secs`).
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Forty consumers ask for 8 MiB each and vanish after a few KiB (half with a reset, half
/// with a plain close, some before reading anything): the gateway's descriptors and memory
/// return to where they were, and a full consumer afterwards gets every batch intact.
#[test]
fn tcp_consumers_vanishing_mid_response_leak_nothing() {
    let (net, work, dir) = test_setup("fvtcp");
    produce(&dir, "v", 20_000, &["--record-size", "1000"]);
    let gw = Gateway::start(&net, &dir, work.path());
    let pid = gw.pid();
    let addr = gw.addr;
    // Warm up (mappings, first connection), then take the baseline.
    in_client_ns(&net, move || {
        consume_verified(
            addr,
            "v",
            0,
            0,
            2000,
            Duration::from_secs(20),
            Duration::ZERO,
        )
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = fd_count(pid);
    in_client_ns(&net, move || {
        for i in 0..40 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = frame(ApiKey::Fetch, 11, &fetch_max("v", 0, i * 300, 8 << 20, 100));
            s.write_all(&req).unwrap();
            if i % 4 != 0 {
                let mut buf = vec![0u8; 4096];
                s.read_exact(&mut buf).unwrap();
            }
            if i % 2 == 0 {
                // RST instead of FIN.
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(s);
        }
    });
    eventually(10, "descriptors back to the baseline", || {
        fd_count(pid) <= fds_before
    });
    let n = in_client_ns(&net, move || {
        consume_verified(
            addr,
            "v",
            0,
            0,
            20_000,
            Duration::from_secs(20),
            Duration::ZERO,
        )
    })
    .unwrap();
    assert!(n > 0);
    stop_without_panic(gw);
}

/// UDP consumers (`kxgw consume --fetch`) killed in the middle of their transfers: the
/// gateway keeps serving, and a full verified consume afterwards gets every record.
#[test]
fn udp_consumers_vanishing_mid_response_do_not_disturb_the_gateway() {
    let (net, work, dir) = test_setup("fvudp");
    // Large enough (100 MB) that a consumer is still mid-transfer when it is killed,
    // however fast the machine.
    produce(&dir, "u", 200_000, &["--record-size", "500"]);
    let (gw, fetch_addr) = start_fetch_gateway(&net, &dir, work.path(), &[]);
    let consume = |count: u64| {
        let count = count.to_string();
        verified_consume(
            &net,
            &fetch_addr,
            "u",
            "0",
            &["--count", &count, "--format", "none"],
        )
    };
    let mut killed_mid_way = 0;
    for i in 0..8 {
        let child = consume(200_000).spawn().unwrap();
        let mut child = KillOnDrop(child);
        std::thread::sleep(Duration::from_millis(20 + 10 * i));
        if child.0.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        }
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    assert!(
        killed_mid_way >= 4,
        "only {killed_mid_way} consumers were killed mid-way"
    );
    let out = consume(200_000).output().unwrap();
    assert!(
        out.status.success(),
        "full consume after the vanished ones failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    stop_without_panic(gw);
}

/// The gateway is SIGKILLed while a consumer is reading; a new gateway on the same address
/// serves again at once, and the consumer (reconnecting) ends with every batch exactly once,
/// in order, intact.
#[test]
fn gateway_sigkill_under_load_and_restart_serves_again() {
    let (net, work, dir) = test_setup("fkill");
    produce(&dir, "k", 200_000, &["--record-size", "200"]);
    let mut gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let reader = {
        let ns = format!("/var/run/netns/{}", net.client_ns);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let pace = Duration::from_millis(20);
            consume_verified(addr, "k", 0, 0, 200_000, Duration::from_secs(30), pace)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reader.is_finished(),
        "the consumer finished before the kill"
    );
    gw.child.0.kill().unwrap();
    gw.child.0.wait().unwrap();
    let gw2 = Gateway::start(&net, &dir, work.path());
    let batches = reader.join().unwrap().expect("consumer across the restart");
    assert_eq!(batches, 2000);
    gw2.stop();
}

/// Retention deletes the first segment while a response from it is half sent: the response
/// completes with intact batches (the open file outlives its name), later reads of the
/// deleted range get OFFSET_OUT_OF_RANGE with the new log start, the rest is served.
#[test]
fn segment_deleted_by_retention_while_served() {
    let (net, work, dir) = test_setup("fret");
    produce(
        &dir,
        "r",
        40_000,
        &["--record-size", "1000", "--segment-bytes", "8000000"],
    );
    let part = dir.join("r-0");
    let segs = segment_files(&part);
    assert!(segs.len() >= 3, "{segs:?}");
    let second = base_of(&segs[1]);
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let first = segs[0].clone();
    let outcome = in_client_ns(&net, move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Shrink our receive buffer so most of the 8 MiB response waits in the gateway.
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(4096)
            .unwrap();
        s.write_all(&frame(
            ApiKey::Fetch,
            11,
            &fetch_max("r", 0, 0, 8 << 20, 100),
        ))
        .unwrap();
        let mut head = [0u8; 1024];
        s.read_exact(&mut head).unwrap();
        // Retention: the files go (the broker deletes .log, .index, .timeindex).
        for ext in ["log", "index", "timeindex"] {
            std::fs::remove_file(first.with_extension(ext)).unwrap();
        }
        let len = kxgw::kafka::frame::response_size(head[..4].try_into().unwrap()).unwrap();
        let mut rest = vec![0u8; len + 4 - head.len()];
        s.read_exact(&mut rest).unwrap();
        let mut whole = head[4..].to_vec();
        whole.extend(rest);
        let mut b = bytes::Bytes::from(whole);
        let r: FetchResponse =
            kxgw::kafka::frame::decode_response(ApiKey::Fetch, 11, 42, &mut b).unwrap();
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        let recs = p.records.clone().unwrap();
        let mut n = 0;
        let mut next = 0;
        for item in kxgw::log::batch::iter(&recs) {
            let (_, h) = item.expect("batches of the deleted segment arrive intact");
            assert_eq!(h.base_offset, next);
            next = h.next_offset();
            n += 1;
        }
        assert!(n > 10, "{n} batches");
        // After the gateway notices, the deleted range is out of range.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch("r", 0, 0));
            let p = &r.responses[0].partitions[0];
            if p.error_code == 1 {
                assert_eq!(p.log_start_offset, second);
                break;
            }
            assert!(Instant::now() < deadline, "deleted segment still served");
            std::thread::sleep(Duration::from_millis(50));
        }
        consume_verified(
            addr,
            "r",
            0,
            second,
            40_000,
            Duration::from_secs(20),
            Duration::ZERO,
        )
    });
    assert!(outcome.unwrap() > 0);
    stop_without_panic(gw);
}

/// Half a batch appended to the active segment (a writer caught mid-write): nothing past the
/// last whole batch is served; when the rest lands, the batch is served intact.
#[test]
fn torn_tail_is_not_served_until_complete() {
    let (net, work, dir) = test_setup("ftorn");
    produce(&dir, "w", 1000, &[]);
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let mut b = kxgw::log::writer::BatchBuilder::new();
    b.begin(1000);
    for i in 0..10 {
        b.push(&kxgw::log::writer::NewRecord {
            timestamp: 1_700_000_000_000 + i,
            key: None,
            value: Some(b"tail record"),
            headers: Vec::new(),
        });
    }
    let batch = b.finish().to_vec();
    let seg = segment_files(&dir.join("w-0")).pop().unwrap();
    let append = |bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    };
    append(&batch[..batch.len() / 2]);
    std::thread::sleep(Duration::from_millis(500));
    let torn = in_client_ns(&net, move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch("w", 0, 1000));
        let p = &r.responses[0].partitions[0];
        (
            p.error_code,
            p.high_watermark,
            p.records.clone().unwrap_or_default().len(),
        )
    });
    assert_eq!(
        torn,
        (0, 1000, 0),
        "(error, high watermark, bytes) at the torn tail"
    );
    append(&batch[batch.len() / 2..]);
    let n = in_client_ns(&net, move || {
        consume_verified(
            addr,
            "w",
            0,
            0,
            1010,
            Duration::from_secs(10),
            Duration::ZERO,
        )
    })
    .unwrap();
    assert!(n > 0);
    gw.stop();
}

/// The high-watermark checkpoint goes bad while serving (garbage, good, missing, good): the
/// gateway never crashes, never serves past the last high watermark it read (a vanished
/// checkpoint does not expose the log end), logs the file, and follows a good checkpoint. A garbage checkpoint at startup is refused
/// with a message naming the file.
#[test]
fn checkpoint_missing_or_garbage() {
    let (net, work, dir) = test_setup("fckpt");
    produce(&dir, "h", 1000, &["--write-checkpoint"]);
    let ckpt = dir.join("replication-offset-checkpoint");
    std::fs::write(&ckpt, "0\n1\nh 0 500\n").unwrap();
    let gw = Gateway::start_with(&net, &dir, work.path(), &["--isolation", "hw"]);
    let addr = gw.addr;
    let ask = |net: &TestNet| {
        in_client_ns(net, move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch("h", 0, 0));
            let p = &r.responses[0].partitions[0];
            let mut last = -1;
            for item in kxgw::log::batch::iter(p.records.as_deref().unwrap_or_default()) {
                last = item.unwrap().1.last_offset();
            }
            (p.high_watermark, last)
        })
    };
    let (h, last) = ask(&net);
    assert_eq!(h, 500);
    assert!(last < 500);
    std::fs::write(&ckpt, "garbage\x00\x01 not a checkpoint").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (h, last) = ask(&net);
    assert_eq!(
        h, 500,
        "a garbage checkpoint keeps the last good high watermark"
    );
    assert!(last < 500);
    std::fs::write(&ckpt, "0\n1\nh 0 800\n").unwrap();
    eventually(10, "the good checkpoint to be followed", || {
        ask(&net).0 == 800
    });
    std::fs::remove_file(&ckpt).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (h, last) = ask(&net);
    assert_eq!(
        h, 800,
        "a vanished checkpoint keeps the last high watermark"
    );
    assert!(last < 800);
    std::fs::write(&ckpt, "0\n1\nh 0 900\n").unwrap();
    eventually(10, "a new checkpoint to be followed", || ask(&net).0 == 900);
    let log = gw.stop();
    assert!(
        log.contains("replication-offset-checkpoint"),
        "the bad checkpoint is named in the log:\n{log}"
    );
    // At startup, garbage is refused with a clear message.
    std::fs::write(&ckpt, "0\n1\nh zero 12\n").unwrap();
    let err_path = work.path().join("garbage-start.log");
    let child = net
        .gw_command(KXGW)
        .args(["serve", "--log-dir"])
        .arg(&dir)
        .args(["--kafka-listen", &format!("{GW_ADDR}:9094")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "started with a garbage checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        !status.success(),
        "started with a garbage checkpoint: {err}"
    );
    assert!(err.contains("replication-offset-checkpoint"), "{err}");
}

/// A 1 MiB UMEM log arena and eight consumers at once on the AF_XDP path with the sg
/// strategy: the arena runs full (counted), those datagrams are copied instead, and every
/// consumer still gets every record, verified.
#[test]
fn arena_full_falls_back_to_copy_and_every_record_arrives() {
    let (net, work, dir) = test_setup("farena");
    produce(
        &dir,
        "a",
        40_000,
        &["--record-size", "1000", "--partitions", "4"],
    );
    let (gw, fetch_addr) = start_fetch_gateway(
        &net,
        &dir,
        work.path(),
        &[
            "--xdp-iface",
            &net.gw_if,
            "--arena-mib",
            "1",
            "--tx-strategy",
            "sg",
            "--require-xdp",
        ],
    );
    let children: Vec<KillOnDrop> = (0..8)
        .map(|i| {
            let partition = (i % 4).to_string();
            let extra = ["--count", "10000", "--connect-timeout-ms", "10000"];
            let child = verified_consume(&net, &fetch_addr, "a", &partition, &extra)
                .args(["--format", ""])
                .spawn()
                .unwrap();
            KillOnDrop(child)
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        let out = std::mem::replace(
            &mut c.0,
            std::process::Command::new("true").spawn().unwrap(),
        )
        .wait_with_output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("errors: 0"),
            "consumer {i}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("verified 10000 records"),
            "consumer {i}: {text}"
        );
    }
    let full = gw.metric("kxgw_xdp_arena_full_total");
    assert!(full > 0, "the arena never ran full:\n{}", gw.metrics());
    stop_without_panic(gw);
}

/// The gateway's interface goes down and up again under the AF_XDP fetch endpoint: the XDP
/// program stays attached, and consumers are served again once the link is back.
#[test]
fn interface_down_and_up_under_af_xdp() {
    let (net, work, dir) = test_setup("fifdn");
    produce(&dir, "d", 20_000, &["--record-size", "500"]);
    let (gw, fetch_addr) = start_fetch_gateway(
        &net,
        &dir,
        work.path(),
        &["--xdp-iface", &net.gw_if, "--require-xdp"],
    );
    let consume = || {
        let extra = [
            "--count",
            "20000",
            "--connect-timeout-ms",
            "15000",
            "--format",
            "",
        ];
        verified_consume(&net, &fetch_addr, "d", "0", &extra)
            .output()
            .unwrap()
    };
    let ok = |out: &std::process::Output| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("errors: 0")
    };
    let first = consume();
    assert!(ok(&first), "before: {first:?}");
    for state in ["down", "up"] {
        let out = TestNet::sh_in(
            &net.gw_ns,
            &format!("ip link set dev {} {state}", net.gw_if),
        )
        .unwrap();
        assert!(out.status.success(), "ip link set {state}: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(net.gw_has_xdp().unwrap(), "XDP program still attached");
    let after = consume();
    assert!(
        ok(&after),
        "after down/up: {}\n{}\n{}",
        after.status,
        String::from_utf8_lossy(&after.stderr),
        gw.log()
    );
    stop_without_panic(gw);
}
