//! `testnet scenario check` says what it said before scenario files were read into one struct
//! per step: `scenario_check.txt` holds broken (and a few valid) scenarios and the messages the
//! check printed for them, line and field, captured from the binary before that change. Each
//! case is written to a temporary directory and checked there by the binary; its standard
//! output, standard error and exit status must be exactly those.
//!
//! The file's cases: `#### case NAME` and the file's text, or `#### case NAME from SCENARIO`
//! and a `#### replace` / `#### with` pair applied to a file of `testnet/scenarios/` (an empty
//! `replace`: as it is); then `#### expect` and the output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::Path;
use std::process::Command;

/// One case of `scenario_check.txt`.
#[derive(Debug)]
struct Case {
    name: String,
    text: String,
    expect: String,
}

/// The text between a marker line and the next `#### ` line, without its last newline if
/// it is followed by one.
fn section<'a>(text: &'a str, marker: &str) -> (&'a str, &'a str) {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text:?}"))
        + marker.len();
    let rest = &text[start..];
    let end = rest.find("\n#### ").map_or(rest.len(), |e| e + 1);
    (&rest[..end], &rest[end..])
}

fn cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(dir.join("tests/scenario_check.txt")).unwrap();
    let mut cases = Vec::new();
    for chunk in file.split("#### case ").skip(1) {
        let (header, body) = chunk.split_once('\n').unwrap();
        let (text, expect) = match header.split_once(" from ") {
            Some((name, scenario)) => {
                let (from, rest) = section(body, "#### replace\n");
                let (to, rest) = section(rest, "#### with\n");
                let (expect, _) = section(rest, "#### expect\n");
                let original = std::fs::read_to_string(dir.join("scenarios").join(scenario))
                    .unwrap_or_else(|e| panic!("{name}: {scenario}: {e}"));
                let (from, to) = (from.strip_suffix('\n').unwrap_or(from), to);
                let to = to.strip_suffix('\n').unwrap_or(to);
                let text = if from.is_empty() {
                    original
                } else {
                    assert!(original.contains(from), "{name}: {scenario} lacks {from:?}");
                    original.replace(from, to)
                };
                (text, expect.to_owned())
            }
            None => {
                let (text, rest) = body.split_once("#### expect\n").unwrap();
                (text.to_owned(), rest.to_owned())
            }
        };
        cases.push(Case {
            name: header.split(' ').next().unwrap().to_owned(),
            text,
            expect,
        });
    }
    cases
}

#[test]
fn scenario_check_prints_what_it_printed_before() {
    let cases = cases();
    assert!(cases.len() >= 90, "{} cases", cases.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for case in &cases {
        std::fs::write(tmp.path().join(&case.name), &case.text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_testnet"))
            .args(["scenario", "check", &case.name])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let got = format!(
            "{}{}exit {}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code().unwrap_or(-1)
        );
        if got != case.expect {
            wrong.push(format!(
                "{}:\n--- expected\n{}--- got\n{got}",
                case.name, case.expect
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_example_scenario_is_checked_as_it_is() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let cases = cases();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") {
            let case = format!("real_{}_as_is.toml", name.trim_end_matches(".toml"));
            let found = cases.iter().find(|c| c.name == case);
            assert!(
                found.is_some_and(|c| c.expect.contains(": ok (")),
                "{name}: add it to scenario_check.txt"
            );
        }
    }
}
