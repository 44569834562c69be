//! Which ClickHouse failures are the data's fault and which are the system's.
//!
//! Rows go over the wire as typed `RowBinary`, so ClickHouse never parses text of ours: a row
//! can only be refused for its *content* by something evaluated on it (a `throwIf` column
//! default, a constraint, a materialized view's conversion or division, a size limit, too many
//! partitions in one block). Those exception codes are [`ErrorKind::BadData`]: the batch is
//! bisected and the rows that still fail alone go to the dead-letter table.
//!
//! Everything else is [`ErrorKind::Transient`] and retried with backoff, never dead-lettered:
//! network errors, timeouts, a server that is down or overloaded, too many parts, and also
//! errors that would hit every row alike (unknown table or column, a row shape that does not
//! match the table after a bad deploy) — dead-lettering those would empty the topic into the
//! dead-letter table; retrying keeps the data in Kafka until an operator fixes the cause.

/// How to react to a failed ClickHouse call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retry later; nothing is committed past what is stored.
    Transient,
    /// The rows were refused for their content: isolate the bad ones, dead-letter them.
    BadData,
}

impl ErrorKind {
    /// Label value of `tollgate_aggregator_clickhouse_errors_total{kind}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::BadData => "bad_data",
        }
    }
}

/// ClickHouse exception codes caused by the content of a row (see `ErrorCodes.cpp`).
const BAD_DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT (a conversion of one of our strings in a view or default)
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    153, // ILLEGAL_DIVISION
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (throwIf guard)
    469, // VIOLATED_CONSTRAINT
];

/// `TOO_MANY_PARTS`: transient (merges catch up), except for its "too many partitions for
/// single INSERT block" variant, which depends on the rows' timestamps.
const TOO_MANY_PARTS: u32 = 252;

/// The exception code in a ClickHouse error message (`Code: 395. DB::Exception: ...`).
pub fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The error with its sources (`network error: client error (Connect): tcp connect error:
/// Connection refused`), for logs.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Classify a failed call.
pub fn classify(error: &clickhouse::error::Error) -> ErrorKind {
    use clickhouse::error::Error as E;
    match error {
        E::BadResponse(message) => match exception_code(message) {
            Some(code) if BAD_DATA_CODES.contains(&code) => ErrorKind::BadData,
            Some(TOO_MANY_PARTS) if message.contains("partitions for single INSERT") => {
                ErrorKind::BadData
            }
            _ => ErrorKind::Transient,
        },
        // Serialising one row failed on our side: that row's content.
        E::Custom(_) | E::SequenceMustHaveLength | E::InvalidUtf8Encoding(_) => ErrorKind::BadData,
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    fn bad(msg: &str) -> E {
        E::BadResponse(msg.to_string())
    }

    #[test]
    fn codes_are_parsed() {
        assert_eq!(
            exception_code("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf'"),
            Some(395)
        );
        assert_eq!(
            exception_code("Code: 60. DB::Exception: Table x doesn't exist"),
            Some(60)
        );
        assert_eq!(exception_code("502 Bad Gateway"), None);
    }

    #[test]
    fn content_errors_are_bad_data_the_rest_transient() {
        assert_eq!(
            classify(&bad(
                "Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero"
            )),
            ErrorKind::BadData
        );
        assert_eq!(
            classify(&bad("Code: 469. DB::Exception: Constraint `c` is violated")),
            ErrorKind::BadData
        );
        assert_eq!(
            classify(&bad("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100)")),
            ErrorKind::BadData
        );
        for transient in [
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
            "Code: 60. DB::Exception: Table tg.usage_events doesn't exist",
            "Code: 33. DB::Exception: Cannot read all data",
            "Code: 241. DB::Exception: Memory limit (total) exceeded",
            "Code: 159. DB::Exception: Timeout exceeded",
            "503 Service Unavailable",
        ] {
            assert_eq!(classify(&bad(transient)), ErrorKind::Transient, "{transient}");
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&E::Network(Box::new(io))), ErrorKind::Transient);
        assert_eq!(classify(&E::TimedOut), ErrorKind::Transient);
        assert_eq!(classify(&E::Custom("bad row".into())), ErrorKind::BadData);
        assert_eq!(ErrorKind::BadData.label(), "bad_data");
    }
}
