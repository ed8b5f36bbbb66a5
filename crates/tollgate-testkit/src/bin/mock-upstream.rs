//! Runs the test kit's mock OpenAI-compatible upstream until Ctrl-C, for trying Tollgate
//! without a model server: `cargo run -p tollgate-testkit --bin mock-upstream`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let upstream = tollgate_testkit::MockUpstream::start().await?;
    println!("{}", upstream.base_url);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
