//! placeholder
use serde_json::Value;
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
}
pub fn run(_a: Args) -> Result<(Value, bool), String> {
    Err("not implemented yet".into())
}
