//! Writes the project's synthetic sensor fixtures into a folder.
//!
//! ```text
//! cargo run -p sparsewatch --example generate_fixtures -- fixtures/
//! ```
//!
//! The output is deterministic (fixed seeds, see `fixtures/gen/`), and
//! `daemon/tests/fixtures.rs` checks that the committed files are exactly what this writes.
//! `fixtures/README.md` describes the files.

#[path = "../../fixtures/gen/mod.rs"]
mod fixture_gen;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: generate_fixtures <output folder>");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for file in fixture_gen::generate() {
        let path = dir.join(file.name);
        if let Err(e) = std::fs::write(&path, &file.contents) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {} ({} bytes)", path.display(), file.contents.len());
    }
    ExitCode::SUCCESS
}
