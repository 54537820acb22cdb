//! `tandem-bench`: see the library's documentation (`bench/src/lib.rs`).

fn main() -> std::process::ExitCode {
    tandem_bench::main(std::env::args().skip(1).collect())
}
