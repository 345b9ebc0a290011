//! Stand-alone `yatai build` for development and the builder's own end-to-end tests; the
//! project's `yatai` binary exposes the same command through `yatai_build::BuildArgs`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "yatai-build", version, about = "Build a bento's OCI image and push it (no Docker daemon)")]
struct Cli {
    #[command(flatten)]
    args: yatai_build::BuildArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match yatai_build::run(cli.args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
