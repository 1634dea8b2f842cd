//! Intentionally empty. glommio 0.9.0 declares `lockfree` as a dependency but never
//! uses it, and the published crate is unsound (RUSTSEC-2022-0033 et al.). We patch it
//! out with this empty crate so audits stay clean and nothing unsound is linked.
