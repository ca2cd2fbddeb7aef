//! The README's close-code table says, for every code the server sends, whether a stock
//! y-websocket client reconnects after it. This test reads the table and checks it against
//! `base::close::code::stock_client_reconnects`, so the two cannot drift apart.

use tandem_server::base::close::code::stock_client_reconnects;

#[test]
fn the_readme_close_code_table_matches_what_stock_clients_do() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("## WebSocket close codes")
        .nth(1)
        .expect("a close-code section");
    let mut rows = 0;
    for line in table.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | code | why | reconnects |
        if cells.len() != 5 || !cells[1].starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let reconnects = match cells[3] {
            "yes" => true,
            "no" => false,
            other => panic!("row {line:?}: reconnects must be yes or no, not {other:?}"),
        };
        for code in cells[1].split('/').map(str::trim) {
            let code: u16 = code.parse().unwrap_or_else(|_| panic!("row {line:?}"));
            assert_eq!(
                stock_client_reconnects(code),
                reconnects,
                "README says a stock client reconnects after {code}: {reconnects}"
            );
            rows += 1;
        }
    }
    assert!(rows >= 8, "only {rows} codes found in the README table");
}
