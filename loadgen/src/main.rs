//! `ringkv-loadgen`: see `ringkv_loadgen::cli` for flags and exit codes.

fn main() {
    std::process::exit(ringkv_loadgen::cli::main(std::env::args_os()));
}
