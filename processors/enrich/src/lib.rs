//! nectar-enrich (in progress).
