//! Client library: blocking and glommio transports over the sans-I/O codec.
