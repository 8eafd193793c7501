//! Country, region and city from the client IP, with the `maxminddb` crate and a MaxMind
//! GeoIP2/GeoLite2 City (or Country) database. The file is read into memory once.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use maxminddb::{Reader, geoip2};

pub(crate) struct Geo {
    reader: Reader<Vec<u8>>,
    path: PathBuf,
}

impl fmt::Debug for Geo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Geo")
            .field("path", &self.path)
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}

/// Where an IP is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Location {
    /// ISO 3166-1 alpha-2, e.g. `GB`.
    pub country: Option<String>,
    /// The first (largest) subdivision's ISO 3166-2 code without the country part, e.g. `ENG`,
    /// `CA` (California).
    pub region: Option<String>,
    /// The English city name.
    pub city: Option<String>,
}

impl Geo {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let reader = Reader::open_readfile(path)
            .map_err(|e| format!("geoip_database {}: cannot open it as a MaxMind DB: {e}", path.display()))?;
        let kind = &reader.metadata().database_type;
        if !kind.contains("City") && !kind.contains("Country") {
            tracing::warn!(path = %path.display(), database_type = %kind, "GeoIP database is neither a City nor a Country database; geo facts may stay empty");
        }
        Ok(Self {
            reader,
            path: path.to_owned(),
        })
    }

    /// `None` when the IP is not in the database (private ranges, an IPv6 address in an IPv4
    /// database) or the record cannot be read.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<Location> {
        let record = match self.reader.lookup(ip).and_then(|r| r.decode::<geoip2::City>()) {
            Ok(record) => record?,
            Err(e) => {
                tracing::debug!(error = %e, "GeoIP lookup failed");
                return None;
            }
        };
        let location = Location {
            country: record.country.iso_code.map(str::to_owned),
            region: record.subdivisions.first().and_then(|s| s.iso_code).map(str::to_owned),
            city: record.city.names.english.map(str::to_owned),
        };
        (location != Location::default()).then_some(location)
    }
}

/// The client IP as headers carry it: `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`,
/// `203.0.113.7:51234`, or an `X-Forwarded-For` list (the first entry is the client).
pub(crate) fn parse_ip(raw: &str) -> Option<IpAddr> {
    let first = raw.split(',').next()?.trim();
    first
        .parse::<IpAddr>()
        .ok()
        .or_else(|| first.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ips_as_headers_carry_them() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_ip("203.0.113.7"), Some(v4));
        assert_eq!(parse_ip(" 203.0.113.7:51234 "), Some(v4));
        assert_eq!(parse_ip("203.0.113.7, 10.0.0.1"), Some(v4));
        assert_eq!(parse_ip("2001:db8::1"), Some(v6));
        assert_eq!(parse_ip("[2001:db8::1]:443"), Some(v6));
        assert_eq!(parse_ip("unknown"), None);
        assert_eq!(parse_ip(""), None);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_the_path() {
        let err = Geo::open(Path::new("/nonexistent/GeoLite2-City.mmdb")).unwrap_err();
        assert!(err.contains("/nonexistent/GeoLite2-City.mmdb"), "{err}");
    }
}
