//! Configuration: TOML file + command-line flags (DESIGN.md §8).
