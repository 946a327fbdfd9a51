//! limits (being written)
