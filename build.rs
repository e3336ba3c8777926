//! Compiles the XDP steering program (`bpf/kxgw.bpf.c`) with clang and generates its
//! libbpf-rs skeleton into OUT_DIR. The program uses only the kernel uapi headers
//! (linux-libc-dev) and libbpf's helper headers (libbpf-dev), so the build does not depend on
//! the running kernel's BTF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/kxgw.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());

    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "\n\nkxgw build: `{clang}` not found. The XDP program in {SRC} needs clang \
             (Debian: apt-get install clang libbpf-dev linux-libc-dev, or run \
             scripts/install-deps.sh as root). Set CLANG=/path/to/clang to use another one.\n"
        );
    }
    for (header, package) in [
        ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
        ("/usr/include/linux/bpf.h", "linux-libc-dev"),
    ] {
        if !std::path::Path::new(header).exists() {
            panic!(
                "\n\nkxgw build: {header} is missing: install {package} \
                 (scripts/install-deps.sh as root installs everything).\n"
            );
        }
    }

    // With -target bpf clang does not search the multiarch include dir that holds asm/*.h.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let (multiarch, target_arch) = match arch.as_str() {
        "aarch64" => ("aarch64-linux-gnu", "arm64"),
        "riscv64" => ("riscv64-linux-gnu", "riscv"),
        _ => ("x86_64-linux-gnu", "x86"),
    };
    let skel = out.join("kxgw.skel.rs");
    let result = SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args([
            format!("-I/usr/include/{multiarch}"),
            format!("-D__TARGET_ARCH_{target_arch}"),
            "-O2".to_string(),
            "-g".to_string(),
            "-Wall".to_string(),
        ])
        .build_and_generate(&skel);
    if let Err(e) = result {
        panic!("\n\nkxgw build: compiling {SRC} into a BPF skeleton failed: {e:#}\n");
    }
}
