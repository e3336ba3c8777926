//! Load and soak: 1,000 Kafka TCP consumers and 64 UDP fetch consumers against one gateway
//! on the veth for `KXGW_SOAK_SECS` seconds (CI: 30; the long variant is
//! `KXGW_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`).
//! Zero errors allowed; the gateway's RSS and open descriptors must stay flat after the
//! warm-up; fetch round-trip p50/p99 of the TCP consumers are printed.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::*;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const TCP_CONSUMERS: usize = 1000;
const TCP_THREADS: usize = 20;
const UDP_CONSUMERS: usize = 64;
const PARTITIONS: i32 = 4;
const RECORDS: u64 = 40_000;

struct Conn {
    s: TcpStream,
    partition: i32,
    offset: i64,
}

/// One fetch on `c`; checks every batch and the offset sequence, wraps at the end.
fn step(c: &mut Conn, end: i64) -> Result<Duration, String> {
    let req = frame(
        ApiKey::Fetch,
        11,
        &fetch_max("s", c.partition, c.offset, 64 << 10, 0),
    );
    let t0 = Instant::now();
    c.s.write_all(&req).map_err(|e| format!("send: {e}"))?;
    let mut b = read_response(&mut c.s).map_err(|e| format!("receive: {e}"))?;
    let rtt = t0.elapsed();
    let r: FetchResponse = kxgw::kafka::frame::decode_response(ApiKey::Fetch, 11, 42, &mut b)
        .map_err(|e| e.to_string())?;
    let p = &r.responses[0].partitions[0];
    if p.error_code != 0 {
        return Err(format!("error code {} at {}", p.error_code, c.offset));
    }
    let bytes = p.records.clone().unwrap_or_default();
    for item in kxgw::log::batch::iter(&bytes) {
        let (_, h) = item.map_err(|e| format!("bad batch: {e}"))?;
        if h.base_offset > c.offset || h.last_offset() < c.offset {
            return Err(format!("batch {} for offset {}", h.base_offset, c.offset));
        }
        c.offset = h.next_offset();
    }
    if c.offset >= end {
        c.offset = 0;
    }
    Ok(rtt)
}

#[test]
fn thousand_tcp_and_64_udp_consumers_soak() {
    let secs: u64 = std::env::var("KXGW_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let net = Arc::new(TestNet::new("soak", 1500).unwrap());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    produce(
        &dir,
        "s",
        RECORDS,
        &[
            "--partitions",
            &PARTITIONS.to_string(),
            "--record-size",
            "200",
        ],
    );
    let per_part = (RECORDS / PARTITIONS as u64) as i64;
    let fetch_addr = format!("{GW_ADDR}:9093");
    let gw = Gateway::start_with(&net, &dir, work.path(), &["--fetch-listen", &fetch_addr]);
    let pid = gw.pid();
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(AtomicU64::new(0));
    let rtts = Arc::new(Mutex::new(Vec::<u32>::new()));

    // TCP: 20 threads in the consumer namespace, 50 connections each, round robin.
    let ns = format!("/var/run/netns/{}", net.client_ns);
    let workers: Vec<_> = (0..TCP_THREADS)
        .map(|w| {
            let (ns, stop, errors, requests, rtts) = (
                ns.clone(),
                stop.clone(),
                errors.clone(),
                requests.clone(),
                rtts.clone(),
            );
            std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let per = TCP_CONSUMERS / TCP_THREADS;
                let mut conns: Vec<Conn> = (0..per)
                    .map(|i| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        Conn {
                            s,
                            partition: ((w * per + i) % PARTITIONS as usize) as i32,
                            offset: ((w * 7919 + i * 104_729) as i64) % per_part,
                        }
                    })
                    .collect();
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for c in conns.iter_mut() {
                        match step(c, per_part) {
                            Ok(rtt) => local.push(rtt.as_micros() as u32),
                            Err(e) => errors.lock().unwrap().push(format!("tcp: {e}")),
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                rtts.lock().unwrap().extend(local);
                conns.len()
            })
        })
        .collect();

    // UDP: 64 `kxgw consume` processes, each restarted when it has read its partition.
    let udp_done = Arc::new(AtomicU64::new(0));
    let udp = {
        let (stop, errors, udp_done) = (stop.clone(), errors.clone(), udp_done.clone());
        let (net, errdir) = (net.clone(), work.path().to_path_buf());
        let cmd = move |i: usize| {
            let p = i as i32 % PARTITIONS;
            let mut c = net.client_command(KXGW);
            c.args(["consume", "--fetch", &fetch_addr, "--topic", "s"])
                .args([
                    "--partition",
                    &p.to_string(),
                    "--from-beginning",
                    "--verify",
                ])
                .args(["--count", &per_part.to_string(), "--format", ""])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(errdir.join(format!("udp-{i}.err"))).unwrap());
            c
        };
        let errdir = work.path().to_path_buf();
        std::thread::spawn(move || {
            let mut slots: Vec<KillOnDrop> = (0..UDP_CONSUMERS)
                .map(|i| KillOnDrop(cmd(i).spawn().unwrap()))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if let Some(st) = slot.0.try_wait().unwrap() {
                        if !st.success() {
                            let err = std::fs::read_to_string(errdir.join(format!("udp-{i}.err")))
                                .unwrap_or_default();
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("udp consumer {i}: {st} {err}"));
                        } else {
                            udp_done.fetch_add(1, Ordering::Relaxed);
                        }
                        *slot = KillOnDrop(cmd(i).spawn().unwrap());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Let the running ones finish their partition.
            let deadline = Instant::now() + Duration::from_secs(60);
            for (i, slot) in slots.iter_mut().enumerate() {
                loop {
                    if let Some(st) = slot.0.try_wait().unwrap() {
                        if st.success() {
                            udp_done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("udp consumer {i} at the end: {st}"));
                        }
                        break;
                    }
                    if Instant::now() > deadline {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("udp consumer {i} never finished"));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };

    // Sample the gateway once a second.
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((t0.elapsed().as_secs(), rss_kib(pid), fd_count(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    let conns: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    udp.join().unwrap();
    let errors = errors.lock().unwrap().clone();
    let mut rtts = rtts.lock().unwrap().clone();
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    let warm = samples.len() / 5;
    let steady = &samples[warm..];
    let (rss_min, rss_max) = steady
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    let (fd_min, fd_max) = steady
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s.2), hi.max(s.2)));
    eprintln!(
        "soak {secs} s: {conns} TCP consumers, {} fetches, p50 {} us, p99 {} us, max {} us; \
         {UDP_CONSUMERS} UDP consumers, {} full partition reads; gateway RSS {rss_min}-{rss_max} KiB, \
         fds {fd_min}-{fd_max} after warm-up; errors {}",
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts.last().copied().unwrap_or(0),
        udp_done.load(Ordering::Relaxed),
        errors.len()
    );
    eprintln!("samples (s, RSS KiB, fds): {samples:?}");
    assert!(
        errors.is_empty(),
        "errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert_eq!(conns, TCP_CONSUMERS);
    assert!(udp_done.load(Ordering::Relaxed) >= UDP_CONSUMERS as u64);
    assert!(
        rss_max - rss_min < 32 * 1024,
        "gateway RSS grew from {rss_min} to {rss_max} KiB"
    );
    assert!(
        fd_max - fd_min <= 8,
        "gateway descriptors moved from {fd_min} to {fd_max}"
    );
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}
