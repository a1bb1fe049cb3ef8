//! The `gradcam-serve` command line: parses and dispatches, nothing else. The settings types
//! live in [`crate::config`]; what each command does lives in [`crate::service`] and
//! [`crate::offline`].

use crate::config::{BenchConfig, ExplainConfig, ServeConfig};
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gradcam-serve",
    version,
    about = "ResNet-50 classification with Grad-CAM explanations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    #[command(after_help = crate::config::SERVE_RULES_HELP)]
    Serve(ServeConfig),
    /// Classify images and write a heatmap overlay (PNG) and the maps (JSON) for each.
    Explain(ExplainConfig),
    /// Measure the engine alone (explain and forward-only, synthetic input) at given batch
    /// sizes on the configured device and precision.
    Bench(BenchConfig),
}

/// What `--version` prints: this program's version and the libtorch this process really
/// loaded (version, directory, what the binary was built for, CUDA and the devices it sees).
pub fn version_text() -> String {
    let lib = crate::model::runtime::detect();
    let cuda = match &lib.cuda {
        Some(v) => format!(
            "CUDA {v} build, {} CUDA device(s) visible",
            tch::Cuda::device_count()
        ),
        None => "CPU-only build".into(),
    };
    format!(
        "gradcam-serve {}\nlibtorch {} from {} (built for {}; {cuda})",
        env!("CARGO_PKG_VERSION"),
        lib.version,
        lib.directory,
        lib.built_for
    )
}

/// Runs the command; the exit status is 0 on success, 2 when `explain` skipped pictures it
/// could not read or decode, 130 when it was interrupted (errors are 1, from `main`).
pub fn run(cli: Cli) -> Result<std::process::ExitCode> {
    use crate::offline::Outcome;
    match cli.command {
        Command::Explain(config) => Ok(match crate::offline::run(config)? {
            Outcome::Complete => std::process::ExitCode::SUCCESS,
            Outcome::Skipped => std::process::ExitCode::from(2),
            Outcome::Interrupted => std::process::ExitCode::from(130),
        }),
        Command::Bench(config) => {
            crate::offline::bench::run(config)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Serve(config) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::service::run(config, shutdown_signal()))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
