//! A minimal MaxMind DB writer for tests, following the format specification
//! (<https://maxmind.github.io/MaxMind-DB/>, version 2.0): an IPv6 search tree with 24-bit
//! records (IPv4 networks live in `::/96`, as in MaxMind's own databases), the 16-byte data
//! section separator, the data section, then `\xAB\xCD\xEFMaxMind.com` and the metadata map.
//! It supports what a GeoIP2 City record needs: maps, arrays, UTF-8 strings and unsigned
//! integers. Networks must not overlap.

use std::net::IpAddr;

/// A value of the MaxMind DB data section.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    String(String),
    Uint16(u16),
    Uint32(u32),
    Uint64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

/// `Value::Map` from `(key, value)` pairs.
pub(crate) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub(crate) fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

// Data section type numbers (spec, "Output Data Section").
const POINTER: u8 = 1;
const UTF8_STRING: u8 = 2;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
const RECORD_BITS: u16 = 24;
const TREE_DEPTH: u32 = 128;

#[derive(Debug, Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a database in memory: [`Writer::insert`] networks, then [`Writer::finish`].
#[derive(Debug)]
pub(crate) struct Writer {
    database_type: String,
    nodes: Vec<[Record; 2]>,
    data: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(database_type: &str) -> Self {
        Self {
            database_type: database_type.to_owned(),
            nodes: vec![[Record::Empty; 2]],
            data: Vec::new(),
        }
    }

    /// Map `network/prefix_len` to `value`. An IPv4 network is stored at `::a.b.c.d/(96+len)`.
    pub(crate) fn insert(&mut self, network: IpAddr, prefix_len: u32, value: &Value) {
        let (bits, depth) = match network {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 96 + prefix_len),
            IpAddr::V6(v6) => (u128::from(v6), prefix_len),
        };
        assert!((1..=TREE_DEPTH).contains(&depth), "prefix length out of range");
        let offset = self.data.len();
        encode(value, &mut self.data);

        let mut node = 0;
        for i in 0..depth {
            let bit = ((bits >> (TREE_DEPTH - 1 - i)) & 1) as usize;
            if i == depth - 1 {
                assert!(matches!(self.nodes[node][bit], Record::Empty), "networks overlap");
                self.nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match self.nodes[node][bit] {
                Record::Node(next) => next,
                Record::Empty => {
                    let next = self.nodes.len();
                    self.nodes.push([Record::Empty; 2]);
                    self.nodes[node][bit] = Record::Node(next);
                    next
                }
                Record::Data(_) => panic!("networks overlap"),
            };
        }
    }

    /// The complete `.mmdb` file.
    pub(crate) fn finish(self) -> Vec<u8> {
        let node_count = self.nodes.len();
        let record_value = |record: Record| -> u32 {
            let value = match record {
                Record::Empty => node_count,
                Record::Node(n) => n,
                // Pointers into the data section skip the tree and the 16-byte separator.
                Record::Data(offset) => node_count + 16 + offset,
            };
            let value = u32::try_from(value).expect("fits");
            assert!(value < 1 << RECORD_BITS, "database too large for 24-bit records");
            value
        };
        let mut out = Vec::new();
        for [left, right] in &self.nodes {
            out.extend_from_slice(&record_value(*left).to_be_bytes()[1..]);
            out.extend_from_slice(&record_value(*right).to_be_bytes()[1..]);
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(METADATA_MARKER);
        let metadata = map([
            ("binary_format_major_version", Value::Uint16(2)),
            ("binary_format_minor_version", Value::Uint16(0)),
            ("build_epoch", Value::Uint64(1_700_000_000)),
            ("database_type", string(&self.database_type)),
            ("description", map([("en", string("Nectar test database"))])),
            ("ip_version", Value::Uint16(6)),
            ("languages", Value::Array(vec![string("en")])),
            ("node_count", Value::Uint32(u32::try_from(node_count).expect("fits"))),
            ("record_size", Value::Uint16(RECORD_BITS)),
        ]);
        encode(&metadata, &mut out);
        out
    }
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(s) => {
            control(UTF8_STRING, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Uint16(n) => uint(UINT16, u64::from(*n), out),
        Value::Uint32(n) => uint(UINT32, u64::from(*n), out),
        Value::Uint64(n) => uint(UINT64, *n, out),
        Value::Map(pairs) => {
            control(MAP, pairs.len(), out);
            for (key, value) in pairs {
                encode(&Value::String(key.clone()), out);
                encode(value, out);
            }
        }
        Value::Array(items) => {
            control(ARRAY, items.len(), out);
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Unsigned integers are big-endian without leading zero bytes; the size is the byte count.
fn uint(type_number: u8, n: u64, out: &mut Vec<u8>) {
    let bytes = n.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    control(type_number, bytes.len() - start, out);
    out.extend_from_slice(&bytes[start..]);
}

/// The control byte: type in the top 3 bits (0 plus an extension byte for types above 7), size
/// in the low 5 bits, with 1–3 more size bytes for sizes of 29 and up.
fn control(type_number: u8, size: usize, out: &mut Vec<u8>) {
    assert_ne!(type_number, POINTER, "pointers are not written");
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (u8::try_from(size).expect("fits"), vec![]),
        29..285 => (29, vec![u8::try_from(size - 29).expect("fits")]),
        285..65_821 => (30, u16::try_from(size - 285).expect("fits").to_be_bytes().to_vec()),
        _ => (
            31,
            u32::try_from(size - 65_821).expect("fits").to_be_bytes()[1..].to_vec(),
        ),
    };
    if type_number <= 7 {
        out.push(type_number << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_number - 7);
    }
    out.extend_from_slice(&extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{Reader, geoip2};

    /// A GeoIP2 City record as MaxMind lays it out.
    fn city(country: &str, subdivision: &str, city: &str, geoname_id: u32) -> Value {
        map([
            (
                "city",
                map([
                    ("geoname_id", Value::Uint32(geoname_id)),
                    ("names", map([("en", string(city))])),
                ]),
            ),
            (
                "country",
                map([("iso_code", string(country)), ("names", map([("en", string(country))]))]),
            ),
            (
                "subdivisions",
                Value::Array(vec![map([("iso_code", string(subdivision))])]),
            ),
        ])
    }

    #[test]
    fn maxminddb_reads_what_this_writes() {
        let mut writer = Writer::new("GeoIP2-City");
        writer.insert(
            "81.2.69.0".parse().unwrap(),
            24,
            &city("GB", "ENG", "London", 2_643_743),
        );
        writer.insert(
            "2001:db8::".parse().unwrap(),
            32,
            &city("US", "CA", "San Francisco", 5_391_959),
        );
        let long_name = "X".repeat(300);
        writer.insert("198.51.100.0".parse().unwrap(), 24, &city("DE", "BE", &long_name, 1));
        let reader = Reader::from_source(writer.finish()).expect("a valid database");
        reader.verify().expect("passes maxminddb's own verification");
        assert_eq!(reader.metadata().database_type, "GeoIP2-City");
        assert_eq!(reader.metadata().ip_version, 6);

        let london = reader.lookup("81.2.69.142".parse().unwrap()).unwrap();
        assert_eq!(london.network().unwrap().to_string(), "81.2.69.0/24");
        let london: geoip2::City = london.decode().unwrap().expect("a record");
        assert_eq!(london.country.iso_code, Some("GB"));
        assert_eq!(london.subdivisions[0].iso_code, Some("ENG"));
        assert_eq!(london.city.names.english, Some("London"));
        assert_eq!(london.city.geoname_id, Some(2_643_743));

        let sf: geoip2::City = reader
            .lookup("2001:db8::1".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(sf.city.names.english, Some("San Francisco"));
        let long: geoip2::City = reader
            .lookup("198.51.100.9".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(long.city.names.english, Some(long_name.as_str()));

        let nowhere = reader.lookup("192.0.2.1".parse().unwrap()).unwrap();
        assert!(!nowhere.has_data());
    }
}
