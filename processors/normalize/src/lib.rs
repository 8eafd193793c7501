//! nectar-normalize (in progress).
