//! pgaudit entries: everything after `AUDIT: ` is one CSV record of 9 or 10 fields.
//!
//! Owns [`AuditEntry`], [`parse_audit`] and [`normalize_statement`]. Matches on the message
//! text, not the severity (pgaudit may log at NOTICE/WARNING), and accepts the
//! `log_error_verbosity = verbose` form `00000: AUDIT: ...`. Sentinels (`<not logged>`,
//! `<none>`, `<previously logged>`) become enum variants; SET/RESET under MISC become class
//! `MISC_SET`. Must not: fill `<previously logged>` statements (that needs session state,
//! kept by the caller).

use std::borrow::Cow;

use serde::Serialize;

use super::csvrow::split_row;
use super::record::{Text, non_empty, owned, part};

/// A statement field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Statement<'a> {
    /// The text, normalized (see [`normalize_statement`]).
    Text(Text<'a>),
    /// `<not logged>`.
    NotLogged,
    /// `<previously logged>`: the same statement as an earlier entry of the session.
    PreviouslyLogged,
}

/// The parameter field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Parameters<'a> {
    /// `<not logged>` (parameter logging off).
    NotLogged,
    /// `<none>`: the statement had no parameters.
    None,
    /// `<previously logged>`.
    PreviouslyLogged,
    /// The values, each as logged (may be `<long param suppressed>`).
    Values(Vec<Text<'a>>),
}

/// One pgaudit entry; texts borrow from the message where it holds them verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry<'a> {
    /// SESSION or OBJECT.
    pub audit_type: Cow<'static, str>,
    /// Statement id within the backend.
    pub statement_id: i64,
    /// Substatement id within the statement.
    pub substatement_id: i64,
    /// READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET.
    pub class: Cow<'static, str>,
    /// Command tag, e.g. `CREATE TABLE`.
    pub command: Cow<'static, str>,
    /// Object type, e.g. TABLE.
    pub object_type: Option<Text<'a>>,
    /// Fully qualified object name.
    pub object_name: Option<Text<'a>>,
    /// The statement.
    pub statement: Statement<'a>,
    /// Parameters.
    pub parameters: Parameters<'a>,
    /// Rows affected/returned (`pgaudit.log_rows = on` only).
    pub rows: Option<i64>,
}

impl AuditEntry<'_> {
    /// The entry with every text owned.
    pub fn into_owned(self) -> AuditEntry<'static> {
        let own = |t: Option<Text<'_>>| t.map(owned);
        AuditEntry {
            audit_type: self.audit_type,
            statement_id: self.statement_id,
            substatement_id: self.substatement_id,
            class: self.class,
            command: self.command,
            object_type: own(self.object_type),
            object_name: own(self.object_name),
            statement: match self.statement {
                Statement::Text(t) => Statement::Text(owned(t)),
                Statement::NotLogged => Statement::NotLogged,
                Statement::PreviouslyLogged => Statement::PreviouslyLogged,
            },
            parameters: match self.parameters {
                Parameters::Values(v) => Parameters::Values(v.into_iter().map(owned).collect()),
                Parameters::NotLogged => Parameters::NotLogged,
                Parameters::None => Parameters::None,
                Parameters::PreviouslyLogged => Parameters::PreviouslyLogged,
            },
            rows: self.rows,
        }
    }
}

/// The pgaudit entry in `message`, `None` when the message is not an audit entry.
pub fn parse_audit(message: &str) -> Option<Result<AuditEntry<'_>, String>> {
    let body = message.strip_prefix("AUDIT: ").or_else(|| {
        let (code, rest) = message.split_at_checked(7)?;
        (code.len() == 7
            && code.ends_with(": ")
            && code[..5].bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| rest.strip_prefix("AUDIT: "))
        .flatten()
    })?;
    Some(parse_body(body))
}

fn parse_body(body: &str) -> Result<AuditEntry<'_>, String> {
    let row = split_row(body).map_err(|e| format!("pgaudit: {e}"))?;
    if !matches!(row.len(), 9 | 10) {
        return Err(format!("pgaudit: {} fields (expected 9 or 10)", row.len()));
    }
    let f = |i: usize| row.get(i);
    let int = |i: usize| {
        let v = f(i);
        v.parse::<i64>()
            .map_err(|_| format!("pgaudit field {} is not a number", i + 1))
    };
    let command = static_or_owned(&f(4), &COMMANDS);
    let class = match (&*f(3), &*command) {
        ("MISC", "SET" | "RESET") => Cow::Borrowed("MISC_SET"),
        (class, _) => static_or_owned(class, &CLASSES),
    };
    let statement = match f(7) {
        s if s == "<not logged>" => Statement::NotLogged,
        s if s == "<previously logged>" => Statement::PreviouslyLogged,
        s => Statement::Text(part(&s, normalize_statement)),
    };
    let list_err = |e: String| format!("pgaudit parameters: {e}");
    let parameters = match f(8) {
        l if l == "<not logged>" => Parameters::NotLogged,
        l if l == "<none>" => Parameters::None,
        l if l == "<previously logged>" => Parameters::PreviouslyLogged,
        Cow::Borrowed(list) => {
            let vals = split_row(list).map_err(list_err)?;
            Parameters::Values((0..vals.len()).map(|i| vals.get(i)).collect())
        }
        Cow::Owned(list) => {
            let vals = split_row(&list).map_err(list_err)?;
            Parameters::Values(
                (0..vals.len())
                    .map(|i| Cow::Owned(vals.get(i).into_owned()))
                    .collect(),
            )
        }
    };
    Ok(AuditEntry {
        audit_type: static_or_owned(&f(0), &AUDIT_TYPES),
        statement_id: int(1)?,
        substatement_id: int(2)?,
        class,
        command,
        object_type: non_empty(f(5)),
        object_name: non_empty(f(6)),
        statement,
        parameters,
        rows: if row.len() == 10 && !f(9).is_empty() {
            Some(int(9)?)
        } else {
            None
        },
    })
}

/// pgaudit's audit types.
const AUDIT_TYPES: [&str; 2] = ["SESSION", "OBJECT"];

/// pgaudit's classes.
const CLASSES: [&str; 7] = [
    "READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET",
];

/// The most frequent command tags.
const COMMANDS: [&str; 15] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "BEGIN", "COMMIT", "ROLLBACK", "SET", "RESET",
    "SHOW", "COPY", "EXECUTE", "CALL", "DO",
];

/// `s` as the static text in `known` (no allocation per entry), or owned when it is not there.
fn static_or_owned(s: &str, known: &[&'static str]) -> Cow<'static, str> {
    known
        .iter()
        .find(|k| **k == s)
        .map_or_else(|| Cow::Owned(s.to_owned()), |k| Cow::Borrowed(*k))
}

/// Leading/trailing whitespace and the terminating `;` removed, so pgaudit 1.x (whole query
/// string with `;`) and 17 (sub-statement without it) agree.
pub fn normalize_statement(s: &str) -> &str {
    let t = s.trim();
    t.strip_suffix(';').map_or(t, str::trim_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_classes_and_quoting() {
        let e = parse_audit("AUDIT: SESSION,1,1,READ,SELECT,,,select pg_last_wal_replay_lsn() >= '0/3CB9AC0',<none>,1")
            .unwrap()
            .unwrap();
        assert_eq!(e.rows, Some(1));
        assert_eq!(e.parameters, Parameters::None);
        assert_eq!(e.object_type, None);
        let e =
            parse_audit("AUDIT: SESSION,7,1,MISC,SET,,,\"SET search_path = public;\",<not logged>")
                .unwrap()
                .unwrap();
        assert_eq!(e.class, "MISC_SET");
        assert_eq!(
            e.statement,
            Statement::Text("SET search_path = public".into())
        );
        assert_eq!(e.parameters, Parameters::NotLogged);
        let e = parse_audit("00000: AUDIT: OBJECT,3,2,WRITE,INSERT,TABLE,public.t,\"insert into t values ($1, $2)\",\"1,<long param suppressed>\"")
            .unwrap()
            .unwrap();
        assert_eq!(
            e.parameters,
            Parameters::Values(vec!["1".into(), "<long param suppressed>".into()])
        );
        assert_eq!(e.rows, None);
        let e =
            parse_audit("AUDIT: SESSION,4,1,READ,SELECT,,,<previously logged>,<previously logged>")
                .unwrap()
                .unwrap();
        assert_eq!(e.statement, Statement::PreviouslyLogged);
        assert!(parse_audit("connection authorized: user=x").is_none());
        assert!(parse_audit("AUDIT: SESSION,x,1,READ").unwrap().is_err());
    }

    #[test]
    fn statement_normalization() {
        assert_eq!(normalize_statement("  select 1 ;\n"), "select 1");
        assert_eq!(normalize_statement("select ';'"), "select ';'");
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,200}") {
            let _ = parse_audit(&format!("AUDIT: {s}"));
        }
    }
}
