//! Tests of the bounds on hostile archives: names, links, sizes and counts.

use super::bounds::{link_target, Limits};
use super::tar_reader::{read_contents, read_contents_within};
use super::tests::{gzip, tar_of, TestSink, E};
use super::ArchiveError;

/// One tar entry written byte by byte, so that names the tar crate's builder
/// refuses to write (absolute, `..`) can be tested.
fn raw_entry(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    bytes
}

fn raw_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = entries.concat();
    tar.extend_from_slice(&[0; 1024]);
    tar
}

fn refusal(tar: &[u8]) -> String {
    match read_contents(tar, &mut TestSink::default()) {
        Err(ArchiveError::Invalid(message)) => message,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("the archive was accepted"),
    }
}

#[test]
fn entry_names_that_leave_the_archive_are_refused() {
    use tar::EntryType::{Directory, Regular};
    for (name, kind, expected) in [
        (
            "/etc/cron.d/x",
            Regular,
            "entry \"/etc/cron.d/x\" has an absolute path",
        ),
        ("/", Directory, "entry \"/\" has an absolute path"),
        (
            "../x",
            Regular,
            "entry \"../x\" climbs out of the archive with \"..\"",
        ),
        (
            "a/../../x",
            Regular,
            "entry \"a/../../x\" climbs out of the archive with \"..\"",
        ),
    ] {
        let tar = raw_tar(&[raw_entry(name, kind, "", b"{}")]);
        assert_eq!(refusal(&tar), expected, "{name}");
    }
    let tar = raw_tar(&[raw_entry("a/../b.json", Regular, "", b"{}")]);
    let contents = read_contents(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert!(contents.files.contains_key("b.json"));
}

#[test]
fn links_that_leave_the_archive_are_refused() {
    use tar::EntryType::{Link, Symlink};
    for (name, kind, target, expected) in [
        (
            "a/l",
            Symlink,
            "/etc/shadow",
            "symlink \"a/l\" points to the absolute path \"/etc/shadow\"",
        ),
        (
            "a/l",
            Symlink,
            "../../x",
            "symlink \"a/l\" points to \"../../x\", outside the archive",
        ),
        (
            "a/l",
            Link,
            "../x",
            "hard link \"a/l\" points to \"../x\", outside the archive",
        ),
        (
            "l",
            Link,
            "/x",
            "hard link \"l\" points to the absolute path \"/x\"",
        ),
    ] {
        let tar = raw_tar(&[raw_entry(name, kind, target, b"")]);
        assert_eq!(refusal(&tar), expected, "{name} -> {target}");
    }
    let tar = raw_tar(&[raw_entry("a/l", Symlink, "../b", b"")]);
    let contents = read_contents(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert_eq!(contents.links["a/l"], "b");
}

#[test]
fn link_targets_are_resolved_from_the_right_place() {
    assert_eq!(
        link_target("a/layer.tar", "../b/layer.tar", true).unwrap(),
        "b/layer.tar"
    );
    assert_eq!(
        link_target("a/layer.tar", "b/layer.tar", false).unwrap(),
        "b/layer.tar"
    );
    assert_eq!(link_target("a/layer.tar", "./c", true).unwrap(), "a/c");
}

#[test]
fn hostile_names_are_cut_short_in_messages() {
    let long = "y".repeat(5000);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    // The builder writes a GNU long-name record for the 5000-byte path.
    b.append_data(&mut h, &long, std::io::empty()).unwrap();
    let mut tar = b.into_inner().unwrap();
    // Make the long name absolute: the record's data is the second block.
    tar[512] = b'/';
    let message = refusal(&tar);
    assert!(message.ends_with("\"… has an absolute path"), "{message}");
    assert!(message.len() < 300, "{}", message.len());
}

#[test]
fn more_entries_than_allowed_are_refused() {
    let names: Vec<String> = (0..=Limits::DEFAULT.entries)
        .map(|i| format!("d{i}/"))
        .collect();
    let entries: Vec<E> = names.iter().map(|n| E::Dir(n)).collect();
    let tar = tar_of(&entries);
    assert_eq!(
        refusal(&tar),
        format!(
            "the archive holds more than {} entries",
            Limits::DEFAULT.entries
        )
    );
    let tar = tar_of(&entries[1..]);
    assert!(read_contents(tar.as_slice(), &mut TestSink::default()).is_ok());
}

/// The tar reader keeps a GNU long name (or PAX record) in memory whole: one
/// of many megabytes is refused before it is read to the end.
#[test]
fn long_name_records_are_bounded() {
    let huge = "n/".repeat(Limits::DEFAULT.header_bytes as usize);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    b.append_data(&mut h, "first.json", &b"{}"[..]).unwrap();
    b.append_data(&mut h, &huge, &b"{}"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    assert_eq!(
        refusal(&tar),
        format!(
            "more than {} bytes of tar headers (PAX records or GNU long names) after entry 1",
            Limits::DEFAULT.header_bytes
        )
    );
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, &huge[..60_000], &b"{}"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    assert!(read_contents(tar.as_slice(), &mut TestSink::default()).is_ok());
}

/// A compression bomb stops at the unpacked limit, whatever the compressed size.
#[test]
fn unpacked_size_is_bounded() {
    let tar = tar_of(&[E::File("zeros", &vec![0; 4 << 20])]);
    let bomb = gzip(&tar);
    assert!(bomb.len() < 64 << 10);
    let limits = Limits {
        unpacked: 1 << 20,
        ..Limits::DEFAULT
    };
    let err = read_contents_within(bomb.as_slice(), &mut TestSink::default(), limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the archive unpacks to more than 1048576 bytes"
    );
    let limits = Limits {
        unpacked: 5 << 20,
        ..Limits::DEFAULT
    };
    assert!(read_contents_within(bomb.as_slice(), &mut TestSink::default(), limits).is_ok());
}

/// Data of regular entries does not count as headers, however large.
#[test]
fn big_entries_are_not_headers() {
    let big = vec![b'x'; 3 << 20];
    let tar = tar_of(&[E::File("a", &big), E::File("b", &big), E::Dir("c/")]);
    let contents = read_contents(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert_eq!(contents.entries, 3);
}
