"""The reliability suite: fault injection, lock pressure, hostile identifiers, bad input,
security and replication. Everything here is marked ``reliability`` (``make
test-reliability``) except a reduced smoke subset that runs in ``make test``."""
