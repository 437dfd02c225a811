//! The benchmark floor: the least any migration tool must do, so no tool can beat it.
//!
//! Connects once to `DATABASE_URL` (no TLS, a current-thread runtime, as db-migrate runs),
//! makes one round trip (`SELECT 1` through the simple query protocol), closes the
//! connection cleanly and exits. With `FLOOR_SQL` naming a file, that round trip sends the
//! file's text instead, as one simple query: the server's own floor for that SQL, with a
//! client that costs next to nothing. `scripts/bench.sh` times it next to the migration tools;
//! see BENCHMARKS.md. A file cut into parts by the ASCII record separator (0x1e, as
//! `scripts/lib/framing.py N VARIANT K` writes it) goes as one query per part, pipelined, up to
//! 64 unanswered: what a message costs beyond its statements.

use tokio_postgres::NoTls;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|e| format!("DATABASE_URL: {e}"))?;
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    let driver = tokio::spawn(connection);
    let sql = match std::env::var_os("FLOOR_SQL") {
        Some(path) => std::fs::read_to_string(path)?,
        None => "SELECT 1".to_string(),
    };
    let mut flight = std::collections::VecDeque::new();
    for part in sql.split('\x1e').filter(|part| !part.trim().is_empty()) {
        let mut query = Box::pin(client.simple_query(part));
        // The first poll sends it; its answer is awaited in turn.
        let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(query.as_mut().poll(cx))).await;
        flight.push_back(query);
        if flight.len() == 64 {
            flight.pop_front().expect("64 in flight").await?;
        }
    }
    while let Some(query) = flight.pop_front() {
        query.await?;
    }
    drop(flight);
    // Dropping the client sends Terminate; the driver then ends, as a tool's would on exit.
    drop(client);
    driver.await??;
    Ok(())
}
