//! `godwit --help` and every subcommand's `--help`, from the real binary: each argument and
//! flag is listed with a description, hidden test flags stay hidden, and each help ends with
//! an example of that subcommand. Needs no services.

use std::process::{Command, Stdio};

fn godwit(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(args)
        .output()
        .expect("run godwit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "godwit {args:?}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The entries of the `Arguments:` and `Options:` sections of a help text: each entry's
/// head (`<PIPELINE>`, `--max-duration <DURATION>`) with its description, whether clap put
/// it on the same line or on the indented lines below.
fn entries(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_section = false;
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_section = line == "Arguments:" || line == "Options:";
            continue;
        }
        if !in_section || line.trim().is_empty() {
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_head = indent <= 6
            && (trimmed.starts_with('-') || trimmed.starts_with('<') || trimmed.starts_with('['));
        if is_head {
            // Same-line layout: the head, two or more spaces, the description.
            let (head, description) = match trimmed.split_once("  ") {
                Some((h, d)) => (h.trim(), d.trim()),
                None => (trimmed, ""),
            };
            out.push((head.to_string(), description.to_string()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(' ');
            last.1.push_str(trimmed);
        }
    }
    out
}

/// The subcommands `godwit --help` lists (without clap's own `help`).
fn subcommands() -> Vec<String> {
    let help = godwit(&["--help"]);
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        if in_commands
            && let Some(name) = line.split_whitespace().next()
            && name != "help"
        {
            names.push(name.to_string());
        }
    }
    names
}

/// Each subcommand and the arguments and flags its help must describe.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "run",
        &["<PIPELINE>", "--once", "--max-duration", "--log-format"],
    ),
    ("check", &["<PIPELINE>", "--json", "--log-format"]),
    ("status", &["<PIPELINE>", "--json", "--log-format"]),
    (
        "inspect",
        &["<PIPELINE>", "--table", "--rows", "--log-format"],
    ),
    ("reload", &["<PIPELINE>", "--table", "--log-format"]),
    (
        "health",
        &["[PIPELINE]", "--url", "--timeout", "--log-format"],
    ),
    ("drop", &["<PIPELINE>", "--yes", "--log-format"]),
];

#[test]
fn every_subcommand_help_describes_each_flag_and_ends_with_an_example() {
    let listed = subcommands();
    let expected: Vec<&str> = EXPECTED.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        listed, expected,
        "`godwit --help` lists other subcommands than this test knows; add the new one to EXPECTED"
    );
    for (sub, flags) in EXPECTED {
        let help = godwit(&[sub, "--help"]);
        let found = entries(&help);
        for flag in *flags {
            let entry = found
                .iter()
                .find(|(head, _)| head == flag || head.split([' ', ',']).any(|w| w == *flag));
            let Some((_, description)) = entry else {
                panic!("godwit {sub} --help does not list {flag}:\n{help}");
            };
            assert!(
                description.split_whitespace().count() >= 3,
                "godwit {sub} --help: {flag} has no real description ({description:?}):\n{help}"
            );
        }
        for (head, description) in &found {
            assert!(
                !description.is_empty(),
                "godwit {sub} --help: {head} has no description:\n{help}"
            );
        }
        // The help ends with an "Example:" / "Examples:" section that runs this subcommand.
        let (_, example) = help
            .rsplit_once("\nExample")
            .unwrap_or_else(|| panic!("godwit {sub} --help has no example:\n{help}"));
        let example_lines: Vec<&str> = example.lines().skip(1).map(str::trim).collect();
        assert!(
            !example_lines.is_empty()
                && example_lines
                    .iter()
                    .all(|l| l.starts_with(&format!("godwit {sub} "))),
            "godwit {sub} --help: the example section must end the help and show `godwit {sub} …`:\n{help}"
        );
    }
}

#[test]
fn hidden_test_flags_stay_hidden() {
    let help = godwit(&["run", "--help"]);
    for flag in ["--crash-after-objects", "--fail-object", "--lease-ttl"] {
        assert!(
            !help.contains(flag),
            "godwit run --help shows {flag}:\n{help}"
        );
    }
}

#[test]
fn top_level_help_describes_every_subcommand_and_has_an_example() {
    let help = godwit(&["--help"]);
    for (sub, _) in EXPECTED {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(sub))
            .unwrap_or_else(|| panic!("godwit --help does not list {sub}:\n{help}"));
        assert!(
            line.split_whitespace().count() >= 4,
            "godwit --help: {sub} has no description:\n{help}"
        );
    }
    assert!(help.contains("\nExample:\n  godwit "), "{help}");
}

#[test]
fn help_to_a_closed_pipe_ends_quietly() {
    for args in [vec!["--help"], vec!["run", "--help"], vec!["--version"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_godwit"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start godwit");
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "godwit {args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "godwit {args:?}:\n{stderr}");
    }
}
