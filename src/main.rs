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
        Command::Train(args) => cli::train::run(args),
        Command::Eval(args) => cli::eval::run(args).map(|()| Outcome::Success),
        Command::Predict(args) => cli::predict::run(args).map(|()| Outcome::Success),
        Command::Profile(args) => cli::profile::run(args),
        Command::Kernels(args) => cli::kernels::run(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::from(1),
        Ok(Outcome::Signal(signal)) => ExitCode::from(128 + signal),
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input (configuration, shapes, unusable files, a backend this build or machine
            // lacks) is a usage error, like clap's own: status 2.
            let usage = matches!(
                e.downcast_ref::<densenet::Error>(),
                Some(
                    densenet::Error::Config(_)
                        | densenet::Error::Shape(_)
                        | densenet::Error::File { .. }
                        | densenet::Error::BackendUnavailable(_)
                        | densenet::Error::MissingLibrary { .. }
                )
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
