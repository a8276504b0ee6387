//! The `tollgate` binary: `serve` and `migrate`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A virtual-key gateway in front of Ollama"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Serve {
        /// Configuration file (default: $TOLLGATE_CONFIG, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config_path, migrate_only) = match &cli.command {
        Command::Serve { config } => (config.clone(), false),
        Command::Migrate { config } => (config.clone(), true),
    };
    let config = match tollgate::config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = tollgate::telemetry::init_logging(&config.log);
    let runtime = match tollgate::server::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if migrate_only {
            migrate(config).await
        } else {
            serve(config).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: tollgate::config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let db = tollgate::store::connect(&config.database)
        .await
        .context("cannot connect to the database (database.url)")?;
    tollgate::store::migrate(&db)
        .await
        .context("database migration failed")?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(config: tollgate::config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = config.server.listen.clone();
    let app = tollgate::app::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    tracing::info!(address = %listen, "tollgate listening");
    let router = tollgate::http::router::build(app.clone());
    tollgate::server::serve(
        listener,
        app.clone(),
        router,
        tollgate::server::shutdown_signal(),
    )
    .await
    .context("server error")?;
    app.close().await;
    tracing::info!("stopped");
    Ok(())
}
