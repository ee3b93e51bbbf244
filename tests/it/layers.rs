//! The crate's layers, as ARCHITECTURE.md draws them, checked against the
//! source: no module names a module of a layer above its own.
//!
//! base (`error`, `hex`, `proto`, `sql`) ← `codec` ← `store` ← `source` ←
//! `replica` ← `tooling`. A module reaches another by its layered path
//! (`crate::codec::entry::..`), never through the crate root's re-exports,
//! so that every dependency shows in its path.

use std::path::{Path, PathBuf};

/// The rank of a top-level module of the library: a module may name
/// modules of its own rank or below.
fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "hex" | "proto" | "sql" => 0,
        "codec" => 1,
        "store" => 2,
        "source" => 3,
        "replica" => 4,
        "tooling" | "build" => 5,
        _ => return None,
    })
}

/// The library's top-level module a source file belongs to.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    Some(if module == "protos" {
        "build".into()
    } else {
        module.into()
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::name` that code (not a comment) in `text` uses, with its
/// line; `name` is empty for `crate::{..}`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, name));
            rest = after;
        }
    }
    found
}

/// The violations of the layering in the library's sources under `src`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        // The crate root wires the layers; the binary (main.rs, cli/)
        // reaches the library as `oplog::`; `testing` serves unit tests.
        let Some(module) = module_of(relative) else {
            continue;
        };
        if ["lib", "main", "cli", "agent", "testing"].contains(&module.as_str()) {
            continue;
        }
        let own = rank(&module)
            .unwrap_or_else(|| panic!("{}: module {module:?} is on no layer", relative.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, name) in crate_paths(&text) {
            let at = format!("{}:{line}", relative.display());
            match rank(&name) {
                Some(r) if r > own => bad.push(format!(
                    "{at}: {module} (layer {own}) names crate::{name} (layer {r})"
                )),
                Some(_) => {}
                None if name == "testing" => {}
                None => bad.push(format!(
                    "{at}: crate::{name} reaches past the layers through the crate root"
                )),
            }
        }
    }
    bad
}

#[test]
fn no_module_names_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_layer_check_finds_an_upward_import_and_a_root_reexport() {
    let dir = std::env::temp_dir().join(format!("oplog-layers-{}", std::process::id()));
    let codec = dir.join("codec");
    std::fs::create_dir_all(&codec).unwrap();
    std::fs::write(
        codec.join("entry.rs"),
        "use crate::store::Appended; // crate::replica in a comment is fine\n\
         /// [`x`](crate::Oplog) in docs is fine\n\
         fn f() -> crate::Result<()> { crate::error::ok() }\n",
    )
    .unwrap();
    std::fs::write(dir.join("sql.rs"), "use crate::error::Error;\n").unwrap();
    let found = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found,
        [
            "codec/entry.rs:1: codec (layer 1) names crate::store (layer 2)",
            "codec/entry.rs:3: crate::Result reaches past the layers through the crate root",
        ]
    );
}
