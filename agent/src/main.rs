//! `flotilla-agent`: the compute agent. Host registration, leases and libvirt/qemu-img/OVS
//! drivers arrive with the compute-agents work; until then the binary says so plainly.
use clap::Parser;

#[derive(Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla compute agent")]
struct Args {
    /// Agent configuration file (TOML).
    #[arg(long, default_value = "/etc/flotilla/agent.toml")]
    config: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "flotilla-agent is not available in this release: compute hosts are not supported yet \
         (config {} was not read)",
        args.config.display()
    )
}
