//! Real manifests written by others still parse within the decoder's
//! bounds: every file of the corpus named by `PODKEEPER_POD_CORPUS` (a
//! directory of single-Pod manifests, e.g. /work/shared/corpus/pods) goes
//! through the parser, and only its known-broken files are refused, for
//! their own faults. Skipped when the variable is unset.

use podkeeper::manifest::parse::parse_manifest;

/// Corpus files refused for a fault of their own, with how the error
/// starts: a missing apiVersion and a schema-invalid affinity (kept in the
/// corpus on purpose), and a `\'` escape in a double-quoted string, which
/// go-yaml accepts and libyaml does not.
const REFUSED: [(&str, &str); 3] = [
    (
        "website__envars-file-container.yaml",
        "invalid YAML: found unknown escape character",
    ),
    (
        "website__pod-single-secret-env-variable.yaml",
        "apiVersion: missing",
    ),
    (
        "website__pod-with-node-affinity.yaml",
        "spec.affinity.nodeAffinity",
    ),
];

#[test]
fn real_manifests_parse_within_the_bounds() {
    let Some(dir) = std::env::var_os("PODKEEPER_POD_CORPUS") else {
        eprintln!("SKIPPED: set PODKEEPER_POD_CORPUS to a directory of Pod manifests");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reading the corpus")
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus is empty");
    for path in &files {
        let bytes = std::fs::read(path).expect("reading a manifest");
        let name = path.file_name().unwrap().to_string_lossy();
        let result = parse_manifest(&bytes, path, "node1");
        let refused = REFUSED.iter().find(|(file, _)| *file == name);
        match (result, refused) {
            (Ok(_), None) => {}
            (Err(e), Some((_, start))) => {
                assert!(e.to_string().starts_with(start), "{name}: {e}");
            }
            (Ok(_), Some(_)) => panic!("{name} was expected to be refused"),
            (Err(e), None) => panic!("{name}: {e}"),
        }
    }
}
