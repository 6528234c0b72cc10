"""One generator module per benchmark family; each exposes `generate(rng) -> Item` and METRIC."""
