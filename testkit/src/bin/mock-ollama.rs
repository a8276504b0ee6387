//! `mock-ollama [ADDR] [FLAGS]`: the test suite's mock Ollama as a standalone server, for
//! trying tollgate without a real Ollama and for the fleet benchmark (default address
//! `127.0.0.1:11434`).
//!
//! Without flags it is the plain mock: every model answers at once. Any scheduler flag
//! makes it simulate one Ollama server's scheduler (see `testkit::ollama::MockOllama::builder`):
//!
//! ```text
//! mock-ollama 127.0.0.1:11500 --models a,b,c --parallel 2 --max-loaded 2 \
//!     --load-ms 3000 --token-ms 50 --frames 20
//! ```
//!
//! In scheduler mode, `GET /_sim/stats` answers the counters as JSON, and on SIGINT or
//! SIGTERM the same JSON is printed as one line to stdout before it exits.

use std::process::ExitCode;
use std::time::Duration;

use testkit::ollama::{MockOllama, MockOllamaBuilder};

const USAGE: &str = "usage: mock-ollama [ADDR] [--models a,b,c] [--parallel N] [--max-loaded N] \
[--max-queue N] [--load-ms MS] [--token-ms MS] [--frames N] [--prompt-tokens N] [--sim]";

#[derive(Debug)]
struct Args {
    addr: String,
    /// `None`: the plain mock.
    sim: Option<MockOllamaBuilder>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut addr = None;
    let mut sim: Option<MockOllamaBuilder> = None;
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Err(USAGE.to_owned());
        }
        if arg == "--sim" {
            sim.get_or_insert_with(MockOllama::builder);
            continue;
        }
        if !arg.starts_with("--") {
            if addr.replace(arg.clone()).is_some() {
                return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
            }
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{arg} wants a whole number, not {value:?}"))
        };
        let count = || number().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let builder = sim.take().unwrap_or_else(MockOllama::builder);
        sim = Some(match arg.as_str() {
            "--models" => builder.models(value.split(',').filter(|m| !m.is_empty())),
            "--parallel" => builder.parallel(count()?),
            "--max-loaded" => builder.max_loaded_models(count()?),
            "--max-queue" => builder.max_queue(count()?),
            "--load-ms" => builder.load_time(Duration::from_millis(number()?)),
            "--token-ms" => builder.token_interval(Duration::from_millis(number()?)),
            "--frames" => builder.completion_frames(count()?),
            "--prompt-tokens" => builder.prompt_tokens(number()?),
            _ => return Err(format!("unknown flag {arg}\n{USAGE}")),
        });
    }
    Ok(Args {
        addr: addr.unwrap_or_else(|| "127.0.0.1:11434".to_owned()),
        sim,
    })
}

/// Resolves on SIGINT, or SIGTERM where there is one.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = match args.sim {
        Some(builder) => builder.start_on(&args.addr).await,
        None => MockOllama::start_on(&args.addr).await,
    };
    let mock = match started {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-ollama: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    match mock.sim_settings() {
        Some(settings) => eprintln!(
            "mock Ollama (scheduler mode: {settings:?}, models {:?}) listening on {}",
            mock.models(),
            mock.url()
        ),
        None => eprintln!("mock Ollama listening on {}", mock.url()),
    }
    if let Err(e) = shutdown_signal().await {
        eprintln!("mock-ollama: cannot wait for a signal: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(stats) = mock.sim_stats() {
        println!("{}", stats.to_json());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn no_flags_is_the_plain_mock() {
        let parsed = args("").expect("parses");
        assert_eq!(parsed.addr, "127.0.0.1:11434");
        assert!(parsed.sim.is_none());
    }

    #[test]
    fn scheduler_flags() {
        let parsed =
            args("127.0.0.1:11500 --models a,b --parallel 2 --load-ms 30").expect("parses");
        assert_eq!(parsed.addr, "127.0.0.1:11500");
        assert!(parsed.sim.is_some());
        assert!(args("--parallel two").is_err());
        assert!(args("--parallel").is_err());
        assert!(args("--bogus 1").is_err());
        assert!(args("a b").is_err());
    }
}
