//! Unit tests of the build script's source scanners (`build/*.rs`), which cargo does not run
//! for build scripts themselves.

#[path = "../build/emu_shared.rs"]
#[allow(dead_code)]
mod emu_shared;
