//! Audit class and command of a statement pgaudit never logged (it failed before pgaudit saw
//! it: parse errors, permission denied, writes on a hot standby).
//!
//! Owns [`classify`]. Mirrors pgaudit's classes from the statement's leading keywords; anything
//! unknown is `UNKNOWN`. Must not: parse SQL beyond the leading keywords.

/// `(class, command)` of `statement`, e.g. `("WRITE", "INSERT")`, `("DDL", "CREATE TABLE")`.
pub fn classify(statement: &str) -> (&'static str, String) {
    let words: Vec<String> = statement
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty() && !w.starts_with("--"))
        .take(4)
        .map(str::to_ascii_uppercase)
        .collect();
    let w = |i: usize| words.get(i).map_or("", String::as_str);
    match w(0) {
        "SELECT" | "WITH" | "VALUES" | "TABLE" | "SHOW" | "FETCH" | "EXPLAIN" => {
            ("READ", w(0).into())
        }
        "PREPARE" | "DECLARE" => ("READ", w(0).into()),
        "COPY" => {
            let to = statement.to_ascii_uppercase().contains(" TO ");
            (if to { "READ" } else { "WRITE" }, "COPY".into())
        }
        "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE" | "MERGE" => ("WRITE", w(0).into()),
        "GRANT" | "REVOKE" => ("ROLE", w(0).into()),
        "CREATE" | "ALTER" | "DROP" => {
            let object = match w(1) {
                "OR" => w(3),
                "UNIQUE" | "TEMP" | "TEMPORARY" => w(2),
                other => other,
            };
            if matches!(object, "ROLE" | "USER" | "GROUP") {
                ("ROLE", format!("{} {object}", w(0)))
            } else {
                ("DDL", format!("{} {object}", w(0)))
            }
        }
        "COMMENT" | "SECURITY" | "REINDEX" | "CLUSTER" | "REFRESH" | "IMPORT" => {
            ("DDL", w(0).into())
        }
        "CALL" | "DO" => ("FUNCTION", w(0).into()),
        "SET" | "RESET" => ("MISC_SET", w(0).into()),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
        | "VACUUM" | "ANALYZE" | "CHECKPOINT" | "DISCARD" | "LISTEN" | "NOTIFY" | "UNLISTEN"
        | "LOCK" | "LOAD" | "DEALLOCATE" | "EXECUTE" => ("MISC", w(0).into()),
        _ => ("UNKNOWN", w(0).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn leading_keywords() {
        assert_eq!(classify("  select * from t"), ("READ", "SELECT".into()));
        assert_eq!(
            classify("INSERT INTO account VALUES (99, 'x', 0);"),
            ("WRITE", "INSERT".into())
        );
        assert_eq!(
            classify("create table t(a int)"),
            ("DDL", "CREATE TABLE".into())
        );
        assert_eq!(
            classify("CREATE OR REPLACE FUNCTION f()"),
            ("DDL", "CREATE FUNCTION".into())
        );
        assert_eq!(
            classify("alter role bob password 'x'"),
            ("ROLE", "ALTER ROLE".into())
        );
        assert_eq!(classify("COPY t TO STDOUT"), ("READ", "COPY".into()));
        assert_eq!(classify("SET work_mem = '8MB'"), ("MISC_SET", "SET".into()));
        assert_eq!(classify("SELEC broken syntax"), ("UNKNOWN", "SELEC".into()));
        assert_eq!(classify(""), ("UNKNOWN", String::new()));
    }
}
