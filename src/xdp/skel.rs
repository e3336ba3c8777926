//! Generated libbpf-rs skeleton of `bpf/kxgw.bpf.c` (built by build.rs into OUT_DIR).
#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_camel_case_types,
    dead_code,
    unused_imports,
    unsafe_op_in_unsafe_fn
)]
include!(concat!(env!("OUT_DIR"), "/kxgw.skel.rs"));
