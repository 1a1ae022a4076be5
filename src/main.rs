//! The `densenet` command-line tool.

mod cli;

use clap::Parser;
use cli::{Cli, Command, Outcome};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info(args) => cli::info::run(args).map(|()| Outcome::Success),
        Command::Verify(args) => cli::verify::run(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input (configuration, shapes) is a usage error, like clap's own: status 2.
            let usage = matches!(
                e.downcast_ref::<densenet::Error>(),
                Some(densenet::Error::Config(_) | densenet::Error::Shape(_))
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
