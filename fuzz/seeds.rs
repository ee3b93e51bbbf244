//! Writes the seed corpus of every fuzz target from `oplog::fuzzing::seeds`:
//! `cargo run --bin seeds -- seeds` (from fuzz/) fills `seeds/<target>/`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    for (target, inputs) in oplog::fuzzing::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input)?;
        }
        println!("{}: {} seeds", dir.display(), inputs.len());
    }
    Ok(())
}
