//! `flotilla`: operates a Flotilla cluster over gRPC. See `docs/cli-reference.md`.

use std::process::ExitCode;

use clap::Parser;
use flotilla_cli::args::Cli;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("flotilla: error: internal error (please report it): {info}");
    }));
    // Usage errors, --help and --version exit here (code 2 for errors).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla: error: cannot start the async runtime: {e}");
            return ExitCode::from(flotilla_cli::EXIT_FAILURE as u8);
        }
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = runtime.block_on(flotilla_cli::run_to_exit_code(
        cli,
        &mut stdout.lock(),
        &mut stderr.lock(),
    ));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
