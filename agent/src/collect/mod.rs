//! Collectors of support parameters. Each gives a value or "unknown: reason", never a guess.
