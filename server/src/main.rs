//! `gpushared`: the gpushare daemon. Everything is in the library (`gpushare_server::cli`).

fn main() -> std::process::ExitCode {
    gpushare_server::cli::main()
}
