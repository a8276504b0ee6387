//! `mock-ollama [ADDR]`: the test suite's mock Ollama as a standalone server, for trying
//! tollgate without a real Ollama (default `127.0.0.1:11434`).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:11434".to_string());
    let mock = testkit::ollama::MockOllama::start_on(&addr).await?;
    eprintln!("mock Ollama listening on {}", mock.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
