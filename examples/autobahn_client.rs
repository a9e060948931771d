//! An Autobahn TestSuite client testee: echoes every case the fuzzingserver
//! runs. Pointed at framegate (in front of the fuzzingserver) it tests the
//! gateway's *upstream* leg with a known-good client on the other side.
//!
//! `cargo run --example autobahn_client -- ws://127.0.0.1:PORT framegate-upstream`

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async_with_config;
use tungstenite::{protocol::WebSocketConfig, Message};

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

async fn case_count(base: &str) -> anyhow::Result<u32> {
    let (mut ws, _) =
        connect_async_with_config(format!("{base}/getCaseCount"), Some(config()), false).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            return Ok(t.parse()?);
        }
    }
    anyhow::bail!("no case count")
}

async fn run_case(base: &str, agent: &str, case: u32) -> anyhow::Result<()> {
    let url = format!("{base}/runCase?case={case}&agent={agent}");
    let (mut ws, _) = connect_async_with_config(url, Some(config()), false).await?;
    // Polling on after a Close is what sends tungstenite's close reply.
    while let Some(msg) = ws.next().await {
        if let m @ (Message::Text(_) | Message::Binary(_)) = msg? {
            ws.send(m).await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "framegate-upstream".into());
    let total = case_count(&base).await?;
    for case in 1..=total {
        // A case that fails the connection is an expected outcome; the report says whether it passed.
        if let Err(e) = run_case(&base, &agent, case).await {
            eprintln!("case {case}: {e}");
        }
    }
    let (mut ws, _) =
        connect_async_with_config(format!("{base}/updateReports?agent={agent}"), None, false)
            .await?;
    ws.close(None).await?;
    while ws.next().await.is_some() {}
    println!("ran {total} cases");
    Ok(())
}
