use clap::Parser;
use gradcam_serve::cli::{self, Cli, Command};
use gradcam_serve::config::LogFormat;
use gradcam_serve::telemetry::{self, Telemetry};

fn main() -> std::process::ExitCode {
    // `--version` names the libtorch actually loaded, which clap's static text cannot.
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.len() == 1 && (args[0] == "--version" || args[0] == "-V") {
        println!("{}", cli::version_text());
        return std::process::ExitCode::SUCCESS;
    }
    // Argument errors exit 1, like every other error: explain keeps 2 for "some pictures
    // skipped". Help and version go to standard output and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    // Traces are the server's: the offline commands only log.
    let (format, traces) = match &cli.command {
        Command::Serve(c) => (
            c.log_format,
            telemetry::configured(|name| std::env::var(name).ok()),
        ),
        Command::Explain(_) | Command::Bench(_) => (LogFormat::Pretty, Ok(None)),
    };
    let telemetry = match traces.and_then(|t| Telemetry::install(format, t)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
