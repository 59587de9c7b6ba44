"""One module per CLI command; ``edgevid.cli`` assembles them lazily so `edgevid --help` stays fast."""
