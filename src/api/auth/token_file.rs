//! The token file, in the format of kube-apiserver's `--token-auth-file`:
//! CSV records `token,user,uid[,"group1,group2"]`, read once at start (as
//! the API server does). Parsed with its rules: fewer than three columns
//! refuses the file, an empty token skips the record, a repeated token
//! replaces the earlier one.

use std::io;

use super::{Tokens, User};

/// Longest token file read: thousands of users fit; a mistake (a log file
/// given as the token file) does not fill memory.
pub const MAX_TOKEN_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading: {0}")]
    Read(#[from] io::Error),
    #[error("larger than {MAX_TOKEN_FILE} bytes")]
    TooLarge,
    #[error("record {record}: {reason}")]
    Record { record: usize, reason: String },
}

/// What parsing found worth a warning (never the tokens themselves).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Warnings {
    /// Record numbers (from 1) with an empty token.
    pub empty: Vec<usize>,
    /// Record numbers (from 1) whose token an earlier record had.
    pub duplicate: Vec<usize>,
}

/// Adds the tokens of `content` to `tokens`.
pub fn parse(content: &[u8], tokens: &mut Tokens) -> Result<Warnings, TokenFileError> {
    if content.len() as u64 > MAX_TOKEN_FILE {
        return Err(TokenFileError::TooLarge);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(content);
    let mut warnings = Warnings::default();
    for (index, record) in reader.records().enumerate() {
        let record_number = index + 1;
        let record = record.map_err(|e| TokenFileError::Record {
            record: record_number,
            reason: e.to_string(),
        })?;
        if record.len() < 3 {
            return Err(TokenFileError::Record {
                record: record_number,
                reason: format!(
                    "has {} columns; at least 3 are needed (token, user name, user uid)",
                    record.len()
                ),
            });
        }
        let token = &record[0];
        if token.is_empty() {
            warnings.empty.push(record_number);
            continue;
        }
        let groups = record
            .get(3)
            .map(|g| g.split(',').map(String::from).collect())
            .unwrap_or_default();
        let user = User {
            name: record[1].to_string(),
            uid: record[2].to_string(),
            groups,
        };
        if !tokens.insert(token, user) {
            warnings.duplicate.push(record_number);
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Tokens, Warnings) {
        let mut tokens = Tokens::default();
        let warnings = parse(text.as_bytes(), &mut tokens).expect("parses");
        (tokens, warnings)
    }

    #[test]
    fn records_give_users_uids_and_groups() {
        let (tokens, warnings) = parsed(
            "t1,alice,1001,\"ops,podkeeper:viewers\"\nt2,bob,1002\n\n\"t,3\",carol,1003,dev\n",
        );
        assert_eq!(warnings, Warnings::default());
        let alice = tokens.lookup("t1").unwrap();
        assert_eq!((alice.name.as_str(), alice.uid.as_str()), ("alice", "1001"));
        assert_eq!(alice.groups, ["ops", "podkeeper:viewers"]);
        assert!(alice.is_viewer());
        assert!(tokens.lookup("t2").unwrap().groups.is_empty());
        assert_eq!(tokens.lookup("t,3").unwrap().groups, ["dev"]);
        assert_eq!(tokens.len(), 3);
    }

    #[test]
    fn empty_and_repeated_tokens_are_reported_by_record() {
        let (tokens, warnings) = parsed(",nobody,0\nt,a,1\nt,b,2\n");
        assert_eq!(warnings.empty, [1]);
        assert_eq!(warnings.duplicate, [3]);
        assert_eq!(tokens.lookup("t").unwrap().name, "b");
    }

    #[test]
    fn short_records_and_broken_quotes_refuse_the_file() {
        let mut tokens = Tokens::default();
        let short = parse(b"t1,alice,1\nt2,bob\n", &mut tokens).unwrap_err();
        assert!(
            matches!(short, TokenFileError::Record { record: 2, .. }),
            "{short}"
        );
        // An unclosed quote swallows the rest of the file into one column.
        assert!(parse(b"\"t1,alice,1\nt2,bob,2\n", &mut Tokens::default()).is_err());
    }

    #[test]
    fn a_file_past_the_limit_is_refused_unread() {
        let big = vec![b'a'; MAX_TOKEN_FILE as usize + 1];
        assert!(matches!(
            parse(&big, &mut Tokens::default()),
            Err(TokenFileError::TooLarge)
        ));
    }
}
