//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, and
//! free to change with the code they exercise).

use crate::h1::request_head::{scan, Scan, MAX_HEAD_BYTES};

/// Reads `input` as isopod's HTTP/1.1 path reads the start of a
/// connection, and checks what a head it takes must satisfy. Panics on a
/// violation, which is what the fuzzer looks for.
///
/// A head the own path takes (`Scan::Simple`) must be one hyper would read
/// the same way: a complete HTTP/1.1 head no longer than the head limit,
/// an origin-form target, at most one `Host` line, no body, and exactly the
/// method, target and lines `httparse` (hyper's parser) sees, the
/// hop-by-hop ones aside.
pub fn check_request_head(input: &[u8]) {
    let head = match scan(input) {
        Scan::Simple(head) => head,
        Scan::Partial | Scan::Defer => return,
    };
    assert!(head.length <= input.len() && head.length <= MAX_HEAD_BYTES);
    assert!(head.target.starts_with('/'));
    let mut lines = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut lines);
    let parsed = request.parse(input).expect("httparse accepts a taken head");
    assert_eq!(parsed, httparse::Status::Complete(head.length));
    assert_eq!(request.version, Some(1));
    assert_eq!(request.method, Some(head.method.as_str()));
    assert_eq!(request.path, Some(head.target));
    let hosts: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|line| line.name.eq_ignore_ascii_case("host"))
        .map(|line| line.value)
        .collect();
    assert!(hosts.len() <= 1, "a head with two Host lines was taken");
    assert_eq!(hosts.first().copied(), head.host);
    for line in request.headers.iter() {
        let name = line.name.to_ascii_lowercase();
        assert!(
            name != "transfer-encoding" && name != "upgrade" && name != "expect",
            "a head with {name} was taken"
        );
        if name == "content-length" {
            assert_eq!(line.value, b"0", "a head with a body was taken");
        }
    }
    for (name, value) in head.headers.iter() {
        assert!(!name.is_empty() && !name.contains(&0) && !value.contains(&0));
        assert_eq!(name, name.to_ascii_lowercase());
        assert!(
            request
                .headers
                .iter()
                .any(|line| line.name.as_bytes().eq_ignore_ascii_case(name) && line.value == value),
            "a line the handler gets was not in the head"
        );
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz target's seeds (`fuzz/seeds/request_head`) pass the check.
    #[test]
    fn the_seed_heads_pass_the_check() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/request_head");
        let mut checked = 0;
        for entry in std::fs::read_dir(&seeds).expect("the seeds are in the repository") {
            let input = std::fs::read(entry.unwrap().path()).unwrap();
            super::check_request_head(&input);
            checked += 1;
        }
        assert!(checked >= 5, "{checked} seeds");
    }
}
