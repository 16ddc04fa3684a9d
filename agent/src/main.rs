//! `flotilla-agent`: the compute agent. `flotilla-agent run --config FILE` registers the host
//! with the controllers and converges it to their desired state until stopped (SIGTERM or
//! Ctrl-C). Stopping the agent leaves the servers running; a restarted agent adopts them.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use flotilla_agent::config::AgentConfig;
use flotilla_agent::service::{self, Drivers};

#[derive(Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla compute agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with the given configuration file.
    Run {
        #[arg(
            long,
            env = "FLOTILLA_AGENT_CONFIG",
            default_value = "/etc/flotilla/agent.toml"
        )]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line: operators read this.
            eprintln!("flotilla-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Run { config } = cli.command;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = AgentConfig::load(&config)?.validate()?;
    let drivers = Drivers::real(&config)?;
    tracing::info!(
        hostname = %config.hostname,
        libvirt = %config.libvirt_uri,
        domain_type = config.domain_type.as_str(),
        state_dir = %config.state_dir.display(),
        "flotilla-agent starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _agent = service::start(&config, drivers);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("flotilla-agent stopping; servers keep running");
        Ok::<_, anyhow::Error>(())
    })?;
    // Blocking driver calls in flight are not waited for.
    runtime.shutdown_background();
    Ok(())
}
