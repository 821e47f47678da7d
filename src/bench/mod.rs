//! The `eventline bench` load tool.
use clap::Args;

/// Arguments of `eventline bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {}

/// Runs a benchmark.
///
/// # Errors
/// Connection failures.
pub async fn run(_args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}
