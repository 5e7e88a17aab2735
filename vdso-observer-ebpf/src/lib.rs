#![no_std]
// Empty: the crate exists for its binary (the eBPF object). This library target
// lets `cargo clippy --workspace` see the crate without the eBPF target.
