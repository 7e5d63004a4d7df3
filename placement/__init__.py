"""Pure placement decisions: given a frozen snapshot, return a decision. No I/O here."""
