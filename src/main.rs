use clap::Parser;
use gradcam_serve::cli::{self, Cli, Command};
use gradcam_serve::config::LogFormat;

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
    let format = match &cli.command {
        Command::Serve(c) => c.log_format,
        Command::Explain(_) | Command::Bench(_) => LogFormat::Pretty,
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only on a terminal: a redirected log is plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
