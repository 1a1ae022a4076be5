//! `densenet info`: layers, parameter count and multiply-adds of a network.

use super::model_args::{ModelArgs, size_or_default};
use clap::Args;
use densenet::info::{render, summarize};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input size HxW (default: 32x32 for the CIFAR stem, 224x224 for ImageNet).
    #[arg(long)]
    pub size: Option<String>,
    /// Print one JSON object (keys include `parameters` and `macs`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let cfg = args.model.config()?;
    let (h, w) = size_or_default(&args.size, &cfg)?;
    let summary = summarize(&cfg, h, w)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}
