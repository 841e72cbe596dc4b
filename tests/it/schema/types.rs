//! The hand-written parts of the config schema against the parsers they describe:
//! `$defs/Duration` and `$defs/ByteSize` (postern's `units`), `$defs/Cidr` (`ipnet`) and
//! `$defs/SocketAddress` (`std`), sample by sample, read from YAML as the loader reads it.

use super::schema;

/// Which of `samples` the loader's own type accepts (read from YAML as the loader reads it)
/// and which `$defs/NAME` accepts must agree, except for the `looser` ones: values the
/// schema lets by and the parser refuses (an overflow, an IPv6 address with too many groups).
/// The schema never refuses what the loader accepts.
fn agree<T: serde::de::DeserializeOwned>(name: &str, samples: &[String], looser: &[String]) {
    let schema = schema();
    let def = jsonschema::draft202012::new(&schema["$defs"][name]).unwrap();
    let mut accepted = 0;
    for sample in samples {
        let yaml: serde_yaml::Value = serde_yaml::from_str(sample).unwrap();
        let loader = serde_yaml::from_value::<T>(yaml.clone()).is_ok();
        let json = serde_json::to_value(&yaml).unwrap();
        let schema = def.is_valid(&json);
        if loader {
            accepted += 1;
            assert!(
                schema,
                "$defs/{name} refuses {sample}, which the loader accepts"
            );
        } else if schema {
            assert!(
                looser.contains(sample),
                "$defs/{name} accepts {sample}, which the loader refuses"
            );
        }
    }
    // The samples test both sides of the line.
    assert!(
        0 < accepted && accepted < samples.len(),
        "{name}: {accepted} accepted"
    );
}

/// A YAML double-quoted scalar of each string.
fn quoted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items
        .into_iter()
        .map(|s| serde_json::to_string(&s).unwrap())
        .collect()
}

/// `n` as written with none, one and two leading zeros.
fn zero_padded(n: u32) -> [String; 3] {
    [format!("{n}"), format!("0{n}"), format!("00{n}")]
}

/// IPv4 octets around every bound (0..=300 in steps of 7, and the edges), zero-padded.
fn octets() -> impl Iterator<Item = String> {
    (0..=300)
        .step_by(7)
        .chain([0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256])
        .flat_map(zero_padded)
}

#[test]
fn durations_and_sizes_match_the_parser() {
    use postern::config::units::{ByteSize, Duration};
    let words = [
        "30s",
        "5m",
        "3d",
        "1w",
        "250ms",
        "45",
        " 2h ",
        "5 m",
        "0",
        "0s",
        "",
        "s",
        "5 parsecs",
        "-3s",
        "3 fortnights",
        "1.5h",
        "5M",
        "5min",
        "10 S",
        "2H",
        "99999999999999999999d",
    ];
    let mut samples = quoted(words.map(String::from));
    samples.extend(["0", "30", "-1", "1.5", "true", "[]", "~"].map(String::from));
    let looser = quoted(["99999999999999999999d".to_owned()]);
    agree::<Duration>("Duration", &samples, &looser);

    let words = [
        "25MiB",
        "64KiB",
        "1GiB",
        "10MB",
        "512",
        "512B",
        "1K",
        "1k",
        "1M",
        "1G",
        "1kB",
        "1KB",
        "1GB",
        " 5 MiB ",
        "12 parsecs",
        "MiB",
        "1mb",
        "1Kib",
        "1TB",
        "1 b",
        "-1",
        "99999999999GB",
    ];
    let mut samples = quoted(words.map(String::from));
    samples.extend(["0", "26214400", "-1", "1.5", "false"].map(String::from));
    let looser = quoted(["99999999999GB".to_owned()]);
    agree::<ByteSize>("ByteSize", &samples, &looser);
}

#[test]
fn networks_match_the_parser() {
    agree::<ipnet::IpNet>("Cidr", &quoted(network_samples()), &[]);
}

/// CIDR samples: IPv4 octets and prefix lengths around every bound, with leading zeros, and
/// IPv6 forms with and without `::`, an embedded IPv4 address, too many or too few groups.
fn network_samples() -> Vec<String> {
    let mut words: Vec<String> = octets().map(|o| format!("{o}.0.0.0/8")).collect();
    words.extend(
        (0..=40)
            .flat_map(zero_padded)
            .map(|p| format!("10.0.0.0/{p}")),
    );
    words.extend(
        (0..=140)
            .step_by(3)
            .chain([128, 129])
            .flat_map(zero_padded)
            .map(|p| format!("2001:db8::/{p}")),
    );
    words.extend(
        [
            "::/0",
            "::1/128",
            "2001:DB8::/32",
            "fe80::1/64",
            "::ffff:10.0.0.0/104",
            "::ffff:010.0.0.0/104",
            "1:2:3:4:5:6:7:8/128",
            "1:2:3:4:5:6:7::/112",
            "::1:2:3:4:5:6:7/128",
            "1::2:3:4:5:6:7:8/128",
            "2001:db8:/32",
            "12345::/16",
            "g::/16",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "::ffff:1.2.3.4.5/128",
            "1.2.3.4::/64",
            "::1.2.3.4:5/128",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
            "fe80::1%2/64",
            "0000:0000::/32",
            "00000::/32",
            "1:2:3:4:5:6:7:8:9/128",
            ":::/0",
            "1:2:3:4:5:6:7:8::/128",
            "1:2:3:4:5:6:7::8/128",
            "::1:2:3:4:5:6:7:8/128",
            "::1:2:3:4:5:6:7:8:9/128",
            "::1:2:3:4:5:6:1.2.3.4/128",
            "::1:2:3:4:5:1.2.3.4/128",
            "1:2:3:4:5:6:1.2.3.4/128",
            "1:2:3:4:5:1.2.3.4/128",
            "1:2::3:4:5:1.2.3.4/128",
            "1.2.3.4::1/128",
            "1:2:3:4:5:6:7:1.2.3.4/128",
            "1:2:3:4:5:6::1.2.3.4/128",
            "1:2:3:4:5:6:7:8::/0",
        ]
        .map(String::from),
    );
    words
}

#[test]
fn socket_addresses_match_the_parser() {
    let mut words: Vec<String> = octets().map(|o| format!("{o}.0.0.1:25")).collect();
    words.extend(
        (0..=70_000)
            .step_by(997)
            .chain([0, 1, 9, 10, 65_529, 65_530, 65_535, 65_536, 65_599, 99_999])
            .flat_map(zero_padded)
            .map(|p| format!("127.0.0.1:{p}")),
    );
    words.extend(
        [
            "[::]:587",
            "[::1]:0",
            "[fe80::1%2]:25",
            "[fe80::1%eth0]:25",
            "[::ffff:127.0.0.1]:25",
            "[::ffff:127.0.0.01]:25",
            "[2001:DB8::1]:587",
            "::1:25",
            "[::1]",
            "[::1]:",
            "::1",
            "localhost:25",
            "127.0.0.1",
            ":25",
            "127.0.0.1:",
            "1.2.3.4:-1",
            "1.2.3.4: 25",
            " 1.2.3.4:25",
            "1.2.3.4:25 ",
            "1.2.3:25",
            "1.2.3.4.5:25",
            "[1.2.3.4]:25",
            "0000000000000025",
            "127.0.0.1:00000000025",
            "[::1]:65536",
            "[1::2:3:4:5:6:7:8]:25",
            "*:25",
            "0.0.0.0:smtp",
            "[1:2:3:4:5:6:7:8:9]:25",
            "[:::]:25",
            "[1:2:3:4:5:6:7::]:25",
            "[::2:3:4:5:6:7:8]:25",
            "[::1:2:3:4:5:6:7:8]:25",
            "[1:2:3:4:5:6:7::8]:25",
            "[::1:2:3:4:5:1.2.3.4]:25",
            "[::1:2:3:4:1.2.3.4]:25",
            "[1:2:3:4:5:6:1.2.3.4]:25",
            "[1:2:3:4:5:6::1.2.3.4]:25",
            "[1:2:3:4:5::1.2.3.4]:25",
            "[1:2:3:4:5:6:7:8%1]:25",
        ]
        .map(String::from),
    );
    agree::<std::net::SocketAddr>("SocketAddress", &quoted(words), &[]);
}
