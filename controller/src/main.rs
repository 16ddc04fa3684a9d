//! `flotilla-controller`: runs one controller replica, or generates the cluster's TLS material.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flotilla-controller",
    version,
    about = "Flotilla controller replica"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a controller with the given configuration file.
    Run {
        #[arg(long, env = "FLOTILLA_CONTROLLER_CONFIG")]
        config: PathBuf,
    },
    /// Generate a cluster CA (reused if DIR already holds one) and certificates for nodes and
    /// clients, signed by it.
    GenCerts(flotilla_controller::certs::GenCertsArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: operators read this.
            eprintln!("flotilla-controller: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            flotilla_controller::telemetry::init();
            let config =
                flotilla_controller::config::ControllerConfig::load(&config)?.validate()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(flotilla_controller::server::run(config))
        }
        Command::GenCerts(args) => flotilla_controller::certs::generate(&args),
    }
}
